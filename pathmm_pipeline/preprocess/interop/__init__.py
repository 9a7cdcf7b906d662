"""Features in and out in the layouts other tools read: :mod:`.layouts` (the export layouts by name, and where
each file goes), :mod:`.export` (a feature store written as TRIDENT / CLAM / STAMP files) and :mod:`.imports`
(a TRIDENT or CLAM h5 file turned into a feature store)."""
