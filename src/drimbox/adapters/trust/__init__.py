"""Trust layer: health-PKI certificates, signed XML, the national DRIM-M whitelist."""
