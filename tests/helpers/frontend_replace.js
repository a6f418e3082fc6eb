// The frontend's own "Replace" code run on a saved workflow, to check tests/helpers/node_replace.py against it.
// usage: node frontend_replace.js <frontend bundle holding replaceWithMapping> <input.json>  (prints JSON)
// input: {"nodes": [{id}...], "links": [[id, origin, origin_slot, target, target_slot, type]...],
//         "jobs": [{"old": saved node, "new": node_replace.new_node(...), "row": the /node_replacements entry}]}
// The bundle's transferInputConnection ... replaceWithMapping functions (frontend 1.49) are evaluated as they are;
// the new nodes are plain objects with the inputs, outputs and widgets the frontend would give them.
const fs = require("fs");
const [bundle, inputPath] = process.argv.slice(2);
const text = fs.readFileSync(bundle, "utf8");
const chunk = text.slice(text.indexOf("function transferInputConnection("), text.indexOf("function useNodeReplacement("));
const api = new Function("Oi", chunk + "; return {replaceWithMapping, generateDefaultMapping};")(() => false);
const data = JSON.parse(fs.readFileSync(inputPath, "utf8"));
const links = new Map(data.links.map(l => [l[0], {id: l[0], origin_id: l[1], origin_slot: l[2], target_id: l[3], target_slot: l[4]}]));
const graph = {links, _nodes: data.nodes.map(n => ({id: n.id})), _nodes_by_id: {}};
for (const job of data.jobs) {
  const old = job.old;
  const e = {id: old.id, pos: old.pos || [0, 0], size: old.size || [1, 1], order: old.order, mode: old.mode || 0,
             flags: old.flags, inputs: (old.inputs || []).map(i => ({name: i.name, link: i.link})),
             outputs: (old.outputs || []).map(o => ({name: o.name, links: [...(o.links || [])]})),
             last_serialization: old, onRemoved() {}};
  const skel = job.new;
  const t = {id: -1, inputs: skel.inputs.map(i => ({name: i.name, link: null})),
             outputs: skel.outputs.map(o => ({name: o.name, links: []})),
             widgets: skel.widget_names.map((n, k) => ({name: n, value: skel.widgets_values[k]})),
             properties: {}};
  const idx = graph._nodes.findIndex(n => n.id === old.id);
  const row = job.row.input_mapping != null || job.row.output_mapping != null ? job.row
            : {...job.row, ...api.generateDefaultMapping(old, t)};
  api.replaceWithMapping(e, t, row, graph, idx);
  job.result = {id: t.id, inputs: t.inputs.map(i => [i.name, i.link]),
                outputs: t.outputs.map(o => [o.name, o.links]),
                widgets: t.widgets.map(w => [w.name, w.value])};
}
const out = {jobs: data.jobs.map(j => j.result),
             links: [...links.values()].map(l => [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot])};
process.stdout.write(JSON.stringify(out));
