"""The embedded demo dataset: simulated paired 3T/7T subjects from the MNI152 template."""
