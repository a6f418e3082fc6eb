// Portrait Animation: frontend touches, loaded by ComfyUI from the pack's WEB_DIRECTORY.
//
// Error dialogs: the frontend titles an execution error with the server's `node_type`, the class id
// ("PortraitAnim_FaceDetector"). For this pack's nodes the title becomes the node's title on the canvas (its display
// name unless the user renamed it), so the dialog names the node the user sees.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PACK_PREFIX = "PortraitAnim_";

function nodeTitle(detail) {
  const id = String(detail.node_id ?? "");
  const graph = app.graph;
  // a node inside a subgraph has an execution id "outer:inner"; the canvas node is the last part's owner
  const node = graph?.getNodeById?.(id.includes(":") ? id.split(":").pop() : id) ?? graph?.getNodeById?.(Number(id));
  const registered = globalThis.LiteGraph?.registered_node_types?.[detail.node_type];
  return node?.title || registered?.title || detail.node_type;
}

function relabel(detail) {
  if (detail && typeof detail.node_type === "string" && detail.node_type.startsWith(PACK_PREFIX)) {
    detail.node_type = nodeTitle(detail);
  }
}

app.registerExtension({
  name: "PortraitAnimation.ErrorTitles",
  setup() {
    // Every WebSocket message reaches the listeners through api.dispatchCustomEvent: relabel before they run.
    const dispatch = api.dispatchCustomEvent?.bind(api);
    if (!dispatch) return;
    api.dispatchCustomEvent = (type, detail) => {
      if (type === "execution_error") relabel(detail);
      return dispatch(type, detail);
    };
  },
});
