"""fer-ray: facial-expression recognition trained, tuned, ensembled, served and bulk-scored on Ray."""

__version__ = "0.1.0"


def predict(images, **options) -> list[dict]:
    """Emotions of the faces in a photo path, an image array, or a list of them; one dict per face.

    ``fer_ray.predict("photo.jpg")`` uses the model that ships with fer-ray; ``artifact=DIR``
    picks another. See ``fer_ray.inference.predict.predict`` for the record fields. (Imported
    here on first use: ``import fer_ray`` stays free of torch.)
    """
    from fer_ray.inference.predict import predict as _predict

    return _predict(images, **options)
