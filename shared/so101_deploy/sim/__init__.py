"""sim: the simulated SO-101 (MuJoCo scene of pick-101's lift task), the sim arm node's logic, the oracle
segmentation/disparity, the scripted policy and the generated test video.  Imports every layer below it."""
