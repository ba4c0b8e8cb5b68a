"""Files in and out: outputs written atomically without replacing anything unasked (`write`),
and bounded readers for every file a user hands us (`read`)."""
from .read import UnreadableFile
from .write import OutputError, refuse_existing, staged_folder, write_file_atomically, write_folder_atomically

__all__ = ["OutputError", "UnreadableFile", "refuse_existing", "staged_folder",
           "write_file_atomically", "write_folder_atomically"]
