"""Small HA-DPO-format and LLaVA-format datasets written into a test's folder, with images of every
PIL mode the loaders must take, a missing file and a corrupt one."""

import json

import numpy as np
from PIL import Image

# VG id -> (folder in its url, folder it really lies in, mode, size); None: listed but absent; "corrupt": not an image
VG_IMAGES = {
    1: ("VG_100K", "VG_100K", "RGB", (37, 91)),
    2: ("VG_100K_2", "VG_100K_2", "L", (64, 48)),
    3: ("VG_100K", "VG_100K", "RGBA", (50, 50)),
    4: ("VG_100K_2", "VG_100K_2", "P", (91, 37)),
    5: ("VG_100K", None, None, None),
    6: ("VG_100K_2", "VG_100K_2", "corrupt", None),
    7: ("VG_100K", "VG_100K_2", "RGB", (20, 30)),
}

DESC_DATA = {
    "1": {"chosen": ["A red circle.", "A red circle on grass."], "rejected": ["A dog.", "A cat.", "Two cups."]},
    "2": {"chosen": ["A grey square."], "rejected": ["A blue square.", "A red square."]},
    "3": {"chosen": ["", "A see-through circle."], "rejected": ["A dog on a table."]},
    "4": {"chosen": ["A wide picture."]},
    "5": {"chosen": ["Gone."], "rejected": ["Still here."]},
    "6": {"chosen": ["Broken."], "rejected": ["Fine."]},
    "7": {"chosen": ["A small picture."], "rejected": ["A large picture."]},
    "999": {"chosen": ["Unknown."], "rejected": ["Known."]},
}


def pope(image_id, correct, chosen="Yes, there is a dog in the image.", reject="No, there is no dog."):
    return {
        "image_id": image_id,
        "question": "Is there a dog in the image?",
        "answer": "no",
        "chosen": chosen,
        "reject": reject,
        "correct": correct,
    }


POPE_DATA = [
    pope(1, False),
    pope(2, True),
    pope(3, False),
    {key: value for key, value in pope(1, False).items() if key != "reject"},
    pope(4, False, reject=""),
    pope(5, False),
    pope(2, False, chosen="No, there is no dog.", reject="Yes, there is a dog."),
]


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def write_image(path, mode, size, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "corrupt":
        path.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
        return
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    image = image.convert(mode) if mode != "P" else image.convert("RGB").quantize(16)
    image.save(path, format="PNG")


def write_visual_genome(root, images=VG_IMAGES):
    """`root/image_data.json` + `VG_100K/`, `VG_100K_2/` as HA-DPO's README lays them out."""
    entries = []
    for image_id, (url_folder, folder, mode, size) in images.items():
        url = f"https://cs.stanford.edu/people/rak248/{url_folder}/{image_id}.jpg"
        entries.append({"image_id": image_id, "url": url, "width": 1, "height": 1, "coco_id": None, "flickr_id": None})
        if folder is not None:
            write_image(root / folder / f"{image_id}.jpg", mode, size, seed=image_id)
    write_json(root / "image_data.json", entries)
    return str(root)


def write_hadpo(root, desc_data=DESC_DATA, pope_data=POPE_DATA):
    """(vg_path, desc_data_path, pope_data_path) of a small HA-DPO-format dataset."""
    root.mkdir(parents=True, exist_ok=True)
    vg_path = write_visual_genome(root / "VG")
    return vg_path, write_json(root / "desc_data.json", desc_data), write_json(root / "pope_data.json", pope_data)


def turn(role, value):
    return {"from": role, "value": value}


LLAVA_IMAGES = {
    "a.png": ("RGB", (37, 91)),
    "b.png": ("L", (64, 48)),
    "c.png": ("RGBA", (50, 50)),
    "d.png": ("P", (91, 37)),
    "bad.png": ("corrupt", None),
}

LLAVA_DATA = [
    {
        "id": "multi",
        "image": "a.png",
        "conversations": [
            turn("human", "What is this?\n<image>"),
            turn("gpt", "A red circle."),
            turn("human", "What colour is it?"),
            turn("gpt", "Red, on grass."),
        ],
    },
    {"id": "text-only", "conversations": [turn("human", "Hello, who are you?"), turn("gpt", "An assistant.")]},
    {
        "id": "gpt-first",
        "image": "b.png",
        "conversations": [
            turn("gpt", "Dropped."),
            turn("human", "<image>\nDescribe the image in detail."),
            turn("gpt", "A grey square."),
        ],
    },
    {"id": "no-conversations", "image": "a.png"},
    {
        "id": "empty-answer",
        "image": "a.png",
        "conversations": [turn("human", "<image>\nIs it red?"), turn("gpt", "  ")],
    },
    {
        "id": "missing-image",
        "image": "absent.png",
        "conversations": [turn("human", "<image>\nIs it red?"), turn("gpt", "Yes.")],
    },
    {
        "id": "corrupt-image",
        "image": "bad.png",
        "conversations": [turn("human", "<image>\nIs it red?"), turn("gpt", "Yes.")],
    },
    {
        "id": "rgba",
        "image": "c.png",
        "conversations": [turn("human", "<image>\nIs there a dog in the image?"), turn("gpt", "No, there is no dog.")],
    },
    {
        "id": "palette",
        "image": "d.png",
        "conversations": [turn("human", "Describe the image."), turn("gpt", "Two cups on a table.")],
    },
    {"id": "system-role", "conversations": [turn("system", "Be brief."), turn("human", "Hi?"), turn("gpt", "Hi.")]},
    {"conversations": [turn("human", "Is it?"), turn("human", "Is it red?")]},
    {
        "id": "unanswered",
        "image": "a.png",
        "conversations": [turn("human", "<image>\nIs it red?"), turn("gpt", "Yes."), turn("human", "Why?")],
    },
    {"id": "stray-image-token", "conversations": [turn("human", "<image>\nWhat is this?"), turn("gpt", "A dog.")]},
]


def write_llava(root, data=LLAVA_DATA, images=LLAVA_IMAGES):
    """(data_path, image_folder) of a small LLaVA-format instruction dataset."""
    for name, (mode, size) in images.items():
        write_image(root / "images" / name, mode, size, seed=len(name))
    return write_json(root / "llava.json", data), str(root / "images")
