"""knee-node: grades knee osteoarthritis on DICOM radiographs and explains it with Grad-CAM."""

__version__ = "0.1.0"
