"""YAML configuration → frozen dataclasses, with every problem reported at once.

Each problem names its location (`at 'profiles.photo.stages[2].upscale.scale': …`) so an admin
can fix a config in one pass. Unknown keys are errors: a typo must never silently fall back to a
default. Relative paths are taken relative to the config file's folder.

The modules: `schema` (the dataclasses and defaults), `fields` (typed settings of a section, problems
collected), `sections` (profiles and inboxes), `services` (executor, web), `folders` (layout and symlink
checks), `parse` (the top level: `parse_config`) and `load` (the file and its YAML: `load_config`). The names
below are the package's interface.
"""

from srd.config.folders import FOLDER_CHECK_S, check_real_folders
from srd.config.load import load_config
from srd.config.parse import MAX_PROCESSES, parse_config
from srd.config.schema import (
    DEFAULT_MODEL,
    DEFAULT_PROFILE,
    DEFAULT_SCALE,
    Config,
    ExecutorSettings,
    Inbox,
    OutputSettings,
    Profile,
    default_profile,
    default_workers,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PROFILE",
    "DEFAULT_SCALE",
    "FOLDER_CHECK_S",
    "MAX_PROCESSES",
    "Config",
    "ExecutorSettings",
    "Inbox",
    "OutputSettings",
    "Profile",
    "check_real_folders",
    "default_profile",
    "default_workers",
    "load_config",
    "parse_config",
]
