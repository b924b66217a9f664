"""What the consumer box hands over once a remote exam is in its cache: instances reconciled to
the local patient identity for import into the local PACS, and a DICOMDIR media ZIP."""
