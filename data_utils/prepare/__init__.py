"""Converters from the public annotation files of each benchmark into the TSV files the tasks read
(``unival prepare``); one module per dataset family, shared reading/writing in ``common``."""
