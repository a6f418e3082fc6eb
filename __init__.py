"""Portrait Animation: ComfyUI nodes for HelloMeme, MEMO and HunyuanPortrait.

Importing this package does no heavy work: ComfyUI calls :func:`comfy_entrypoint`, which imports the node modules
(themselves light; models and face/audio libraries load when a node runs). Outside ComfyUI the sub-packages
(``loaders``, ``face``, ``media``, ``runtime``, the model packages) are plain torch code usable from scripts.
"""

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"  # frontend touches (error dialogs titled with display names); no node logic lives there


async def comfy_entrypoint():
    from .nodes import PortraitAnimationExtension

    return PortraitAnimationExtension()
