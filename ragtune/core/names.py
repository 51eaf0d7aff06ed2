"""Names of collections, adapters and profiles: what URLs, folders and the `model` field can carry."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
