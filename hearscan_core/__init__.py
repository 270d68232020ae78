"""hearscan's ground floor: what every other package may import, and which imports nothing of the project.

`errors` (the errors users see: each names the file or option at fault and the fix), `files` (atomic
writes: nothing half-written ever looks complete), `seeds` (the one parser of seed lists).
"""

__version__ = "0.1.0"
