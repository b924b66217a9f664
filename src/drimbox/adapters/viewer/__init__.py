"""The web viewer the box serves to its users: OHIF v3 over the box's DICOMweb proxy."""

from drimbox.adapters.viewer.ohif import app_config, app_config_js, viewer_routes, viewer_url

__all__ = ["app_config", "app_config_js", "viewer_routes", "viewer_url"]
