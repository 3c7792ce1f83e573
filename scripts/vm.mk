# Example Makefile: back up and restore one VM by name with vrepo (docs/vrepo.md).
#
# Usage:
#   make -f scripts/vm.mk backup  VM=name VMS=dir REPO=dir [MODE=--full] [MSG=text]
#       save VMS/VM into REPO: `vrepo save --at-snapshot` when the VM is running (it has a
#       lock folder, *.lck), a plain save otherwise; MODE: --full, --incremental or
#       --differential (default: incremental against what this folder was saved as)
#   make -f scripts/vm.mk restore VM=name ENTRY=E3 DEST=dir REPO=dir [FORCE=1]
#       build entry ENTRY (default: latest) into DEST (default: VMS/VM-restored-ENTRY);
#       DEST must be empty unless FORCE=1
#   make -f scripts/vm.mk list    REPO=dir      the entries, oldest first
#   make -f scripts/vm.mk tree    REPO=dir      the trees of entries
#   make -f scripts/vm.mk verify  REPO=dir      read every stored byte (exit 1 on damage)
#
# REPO defaults to $VREPO_REPOSITORY, VREPO (the binary) to `vrepo`. vrepo's exit codes
# (docs/exit-codes.md) become make's failure.

VREPO ?= vrepo
REPO ?= $(VREPO_REPOSITORY)
VMS ?= .
VM ?=
ENTRY ?= latest
DEST ?= $(VMS)/$(VM)-restored-$(ENTRY)
MODE ?=
MSG ?= make backup $(VM)
FORCE ?=

vrepo_cmd = "$(VREPO)" -r "$(REPO)" --quiet

.PHONY: backup restore list tree verify need-repo need-vm

need-repo:
	$(if $(REPO),,$(error vm.mk: REPO=dir is required))

need-vm:
	$(if $(VM),,$(error vm.mk: VM=name is required))
	@if [ ! -d "$(VMS)/$(VM)" ]; then echo "vm.mk: no VM folder $(VMS)/$(VM)" >&2; exit 2; fi

backup: need-repo need-vm
	@if [ -n "$$(find "$(VMS)/$(VM)" -maxdepth 1 -name '*.lck' -print -quit)" ]; then \
		echo "vm.mk: $(VM) is running: saving it at its snapshot"; \
		$(vrepo_cmd) save "$(VMS)/$(VM)" --at-snapshot $(MODE) -m "$(MSG)"; \
	else \
		$(vrepo_cmd) save "$(VMS)/$(VM)" $(MODE) -m "$(MSG)"; \
	fi

restore: need-repo
	$(vrepo_cmd) build "$(ENTRY)" "$(DEST)" $(if $(FORCE),--force)

list: need-repo
	$(vrepo_cmd) list

tree: need-repo
	$(vrepo_cmd) tree

verify: need-repo
	$(vrepo_cmd) verify --read-data
