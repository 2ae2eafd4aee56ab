"""Data: media I/O, face detection and cropping, face-mesh depth, datasets."""
