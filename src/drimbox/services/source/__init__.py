"""DRIMbox Source: from the RIS report message to the published KOS."""
