"""fota-lab: a firmware-over-the-air lab whose devices survive power cuts."""
