"""ComfyUI folder registration. Imported only inside ComfyUI."""
from __future__ import annotations

import os

PACK_FOLDER = "portrait_animation"
STANDARD_FOLDERS = ("checkpoints", "vae", "clip_vision", "audio_encoders", "text_encoders", "diffusion_models", "loras")


def register_comfy_folders() -> None:
    """Register the pack's model folder with ``folder_paths``, merging with entries from extra_model_paths.yaml.

    ``models/portrait_animation`` is appended (not prepended), so a folder the user configured for this key comes
    first and receives downloads. Standard keys that an older ComfyUI lacks are added the same way.
    """
    import folder_paths

    folder_paths.add_model_folder_path(PACK_FOLDER, os.path.join(folder_paths.models_dir, PACK_FOLDER))
    for key in STANDARD_FOLDERS:
        if key not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(key, os.path.join(folder_paths.models_dir, key))


def comfy_folders(key: str) -> list[str]:
    """The folders searched for a folder key, in order (the first receives downloads).

    The pack's own and the standard keys are registered if missing. Any other key (the alternates' ``wav2vec``,
    ``emotion2vec``, ``insightface`` ...) is only looked up, never registered: the folders another pack registered for
    it, else ``<models_dir>/<key>``.
    """
    import folder_paths

    if key in (PACK_FOLDER, *STANDARD_FOLDERS) and key not in folder_paths.folder_names_and_paths:
        register_comfy_folders()
    try:
        return list(folder_paths.get_folder_paths(key))
    except KeyError:
        return [os.path.join(folder_paths.models_dir, key)]
