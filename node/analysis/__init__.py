"""The analysis stage: decode a radiograph to display space, find its knees, grade them with Grad-CAM.

decode -> localize -> model (the DenseNet-121 grader, Grad-CAM in its forward pass) -> attention -> grading
(the Analyzer, which runs them for a batch of radiographs and flags what is unreliable).
"""
