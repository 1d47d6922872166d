"""`netapply import compose`: the networking of a Docker Compose file as a netapply spec.

A Compose file (a dict) -> spec text (YAML with comments) and notes, by pure
functions (`convert`); reading the file (`read`) and, where the `docker
compose` plugin is installed, normalising it first (`run_config`, the one
function here that starts a program) are kept apart.

Where each behaviour comes from:
- the Compose specification (compose-spec.io): the keys of `services` and
  `networks`, the short and long syntax of `ports`, the implicit `default`
  network that services without `networks` join;
- Compose v2 itself: container names `<project>-<service>-1`, project names
  normalised to lowercase `[a-z0-9_-]`, networks connected by `priority`
  (highest first) then by name, port ranges expanded one port per entry,
  networks that no service uses never created;
- docs/docker.md: what netapply has for each Docker option, or why nothing.

Every Compose key without a netapply equivalent becomes a YAML comment in the
output naming it, so nothing is dropped silently.

The modules, one job each:
- reading.py: the Compose file as YAML 1.2, `docker compose config`, and the
  project name;
- importer.py: the whole import (`import_file`, `convert`);
- converter.py: networks, services and their attachments -> spec blocks;
- ports.py: Compose's port syntaxes -> netapply's;
- yamltext.py: the spec written as YAML text with comments.
Names with a leading underscore are shared between these modules only; the
names below are the package's interface.
"""

from reconciler.compose.importer import Imported, convert, import_file
from reconciler.compose.reading import (
    DEFAULT_PROJECT,
    ComposeLoader,
    netapply_project,
    project_name,
    read,
    run_config,
)

__all__ = ["DEFAULT_PROJECT", "ComposeLoader", "Imported", "convert", "import_file",
           "netapply_project", "project_name", "read", "run_config"]
