"""A small COCO-format annotation set (instances + captions) for the CHAIR tests."""

import json
import os

COCO_CATEGORIES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]  # fmt: skip
# COCO's own category ids (with its gaps), so the fixture reads like instances_val2014.json.
COCO_IDS = [number for number in range(1, 91) if number not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
CATEGORY_ID = dict(zip(COCO_CATEGORIES, COCO_IDS))

# image_id -> (instance categories, reference captions)
ANNOTATIONS = {
    101: (["dog", "person", "dog"], ["A man walking his dog on a leash.", "A person with a dog on a street."]),
    102: (["dining table", "pizza"], ["Two hot dogs and a pizza on a table.", "Food on a wooden table."]),
    103: (["toilet"], ["A toilet with the seat up next to a sink.", "A small white bathroom."]),
    104: ([], ["An empty street at night.", "A dark road under a cloudy sky."]),
    105: (["teddy bear"], ["A teddy bear sitting on a bed.", "A stuffed toy on a blanket."]),
}


def write_coco(folder, annotations=ANNOTATIONS):
    """instances_val2014.json and captions_val2014.json in COCO's format; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    images = [{"id": image_id, "file_name": f"COCO_val2014_{image_id:012d}.jpg", "height": 480, "width": 640}
              for image_id in annotations]  # fmt: skip
    instances, captions = [], []
    for image_id, (objects, texts) in annotations.items():
        for name in objects:
            instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": CATEGORY_ID[name],
                              "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0, "segmentation": []})  # fmt: skip
        for text in texts:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
    header = {"info": {"description": "CHAIR test set"}, "licenses": []}
    category_list = [{"id": CATEGORY_ID[name], "name": name, "supercategory": "thing"} for name in COCO_CATEGORIES]
    with open(os.path.join(folder, "instances_val2014.json"), "w") as handle:
        json.dump({**header, "images": images, "annotations": instances, "categories": category_list}, handle)
    with open(os.path.join(folder, "captions_val2014.json"), "w") as handle:
        json.dump({**header, "images": images, "annotations": captions}, handle)
    return str(folder)
