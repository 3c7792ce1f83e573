# Example Makefile: back up and restore VMs by name with vrepo (docs/vrepo.md).
#
# Usage:
#   make -f scripts/vm.mk backup  VM=name VMS=dir REPO=dir [MODE=--full] [MSG=text]
#       save VMS/VM into REPO as VM `name` (`vrepo save --vm name`; a / in name becomes _):
#       `vrepo save --at-snapshot` when the VM is running (it has a lock folder, *.lck), a
#       plain save otherwise; MODE: --full, --incremental or --differential (default:
#       incremental against what this folder was saved as)
#   make -f scripts/vm.mk restore [VM=name] [ENTRY=E3] DEST=dir REPO=dir [FORCE=1]
#       build entry ENTRY (default: name:latest, VM name's newest entry; latest without VM)
#       into DEST (default: VMS/VM-restored-ENTRY, ENTRY without `name:`); DEST must be
#       empty unless FORCE=1
#   make -f scripts/vm.mk -j4 -k site VMS=dir REPO=dir [KEEP_LAST=N] [KEEP_DAILY=7]
#           [KEEP_WEEKLY=4] [KEEP_MONTHLY=6] [LOG_DIR=dir] [MAX_CHAIN=N] [LOCK_WAIT=3600]
#       save every VM folder under VMS as site-backup.sh finds and names them (a folder holding
#       a .vmx, failing when it holds more than one; VM name: its path under VMS, each / made
#       _; two folders of one name both fail), each by a target of its own,
#       site-save/NAME, as many at once as -j allows, each logging its timestamped lines to
#       LOG_DIR/NAME.log (default: REPO/site-logs) and to stdout; then, once every save has
#       ended, one `vrepo prune` of the VMs saved, each keeping its own newest entries
#       (KEEP_*=0 for all: no prune). Fails when any VM failed, naming each; with -k every other
#       VM is still saved and pruned (without it, make starts no save after the first failure).
#       Folder paths with characters make cannot take (spaces, : # % $ ...) fail: use
#       site-backup.sh for those.
#   make -f scripts/vm.mk list    REPO=dir [VM=name]   the entries (of VM name), oldest first
#   make -f scripts/vm.mk tree    REPO=dir [VM=name]   the trees of entries
#   make -f scripts/vm.mk vms     REPO=dir             the VMs, their entries and stored bytes
#   make -f scripts/vm.mk verify  REPO=dir [VM=name]   read every stored byte (exit 1 on damage)
#
# REPO defaults to $VREPO_REPOSITORY, VREPO (the binary) to `vrepo`. vrepo's exit codes
# (docs/exit-codes.md) become make's failure.

# This file, for the sub-makes of `site` (before anything is included).
vm_mk := $(lastword $(MAKEFILE_LIST))

VREPO ?= vrepo
REPO ?= $(VREPO_REPOSITORY)
VMS ?= .
VM ?=
# VM's name in the repository: a / is not allowed in one.
vm_name = $(subst /,_,$(VM))
ENTRY ?= $(if $(VM),$(vm_name):latest,latest)
DEST ?= $(VMS)/$(VM)-restored-$(subst :,_,$(patsubst $(vm_name):%,%,$(ENTRY)))
MODE ?=
MSG ?= make backup $(VM)
FORCE ?=
LOG_DIR ?= $(REPO)/site-logs
KEEP_LAST ?= 0
KEEP_DAILY ?= 7
KEEP_WEEKLY ?= 4
KEEP_MONTHLY ?= 6
MAX_CHAIN ?=
LOCK_WAIT ?= 3600
# Set by `site` for its sub-makes: a folder where each VM saved leaves a file of its name.
SITE_STAMPS ?=

vrepo_cmd = "$(VREPO)" -r "$(REPO)" --quiet
vm_opt = $(if $(VM),--vm="$(vm_name)")

.PHONY: backup restore list tree vms verify need-repo need-vm need-vms

need-repo:
	$(if $(REPO),,$(error vm.mk: REPO=dir is required))

need-vm:
	$(if $(VM),,$(error vm.mk: VM=name is required))
	@if [ ! -d "$(VMS)/$(VM)" ]; then echo "vm.mk: no VM folder $(VMS)/$(VM)" >&2; exit 2; fi

need-vms:
	@if [ ! -d "$(VMS)" ]; then echo "vm.mk: no folder VMS=$(VMS)" >&2; exit 2; fi

backup: need-repo need-vm
	@if [ -n "$$(find "$(VMS)/$(VM)" -maxdepth 1 -name '*.lck' -print -quit)" ]; then \
		echo "vm.mk: $(VM) is running: saving it at its snapshot"; \
		$(vrepo_cmd) save "$(VMS)/$(VM)" --vm="$(vm_name)" --at-snapshot $(MODE) -m "$(MSG)"; \
	else \
		$(vrepo_cmd) save "$(VMS)/$(VM)" --vm="$(vm_name)" $(MODE) -m "$(MSG)"; \
	fi

restore: need-repo
	$(vrepo_cmd) build "$(ENTRY)" "$(DEST)" $(if $(FORCE),--force)

list: need-repo
	$(vrepo_cmd) list $(vm_opt)

tree: need-repo
	$(vrepo_cmd) tree $(vm_opt)

vms: need-repo
	$(vrepo_cmd) vms

verify: need-repo
	$(vrepo_cmd) verify --read-data $(vm_opt)

# --- site: every VM of a folder -------------------------------------------------------------

# The VM folders under VMS, relative to it ("." for VMS itself), one a line: folders holding a
# .vmx, outside lock folders (site-backup.sh's discovery).
site_find = (cd "$(VMS)" && find . -name '*.lck' -prune -o -type f -name '*.vmx' -printf '%h\n') \
	| sed 's,^\./,,' | LC_ALL=C sort -u
# What a folder path may hold to be a make target and a quoted shell word.
site_plain = ^[A-Za-z0-9._+@,/-]*$$

ifneq ($(filter site site-%,$(MAKECMDGOALS)),)
site_dirs := $(shell $(site_find) | LC_ALL=C grep '$(site_plain)')
endif
# VM name of folder $(1): its path with each / made _; VMS itself is named after its folder.
site_name = $(if $(filter .,$(1)),$(notdir $(abspath $(VMS))),$(subst /,_,$(1)))
site_names := $(foreach d,$(site_dirs),$(call site_name,$(d)))
# Names two folders would get: those VMs fail.
site_twice := $(foreach n,$(sort $(site_names)),$(if $(word 2,$(filter $(n),$(site_names))),$(n)))
$(foreach d,$(site_dirs),$(eval site_dir.$(call site_name,$(d)) := $(d)))
site_saves := $(addprefix site-save/,$(filter-out $(site_twice),$(site_names)))

.PHONY: site site-saves site-prune $(site_saves)

# Phase one saves (make's parallelism, -k), phase two prunes what was saved, whatever failed.
# Then one line names every VM that failed.
site: need-repo need-vms
	@stamps=$$(mktemp -d) || exit 2; \
	$(MAKE) -f "$(vm_mk)" site-saves SITE_STAMPS="$$stamps"; \
	pruned=0; $(MAKE) -f "$(vm_mk)" site-prune SITE_STAMPS="$$stamps" || pruned=1; \
	$(if $(findstring n,$(firstword -$(MAKEFLAGS))),rm -rf "$$stamps"; exit 0;) \
	saved=0; nfailed=0; failed=; \
	for n in $(site_names) ""; do \
		if [ -z "$$n" ]; then :; \
		elif [ -e "$$stamps/saved-$$n" ]; then saved=$$((saved + 1)); \
		else nfailed=$$((nfailed + 1)); failed="$$failed $$n"; fi; \
	done; \
	$(foreach n,$(site_twice),echo "vm.mk: FAILED $(n): more than one folder gets this VM name" >&2;) \
	$(site_find) | LC_ALL=C grep -v '$(site_plain)' >"$$stamps/odd"; \
	while IFS= read -r d; do \
		echo "vm.mk: FAILED $$d: make cannot take this folder name (use site-backup.sh)" >&2; \
		nfailed=$$((nfailed + 1)); failed="$$failed $$d"; \
	done <"$$stamps/odd"; \
	rm -rf "$$stamps"; \
	if [ "$$saved" -eq 0 ] && [ "$$nfailed" -eq 0 ]; then \
		echo "site backup done: no VM folder (a .vmx) under $(VMS)" >&2; exit 1; \
	fi; \
	if [ "$$nfailed" -gt 0 ]; then \
		echo "site backup done: $$saved saved, $$nfailed failed ($${failed# })$$([ "$$pruned" -eq 0 ] || echo ', prune failed')" >&2; \
		exit 1; \
	fi; \
	if [ "$$pruned" -ne 0 ]; then echo "site backup done: $$saved saved, 0 failed, prune failed" >&2; exit 1; fi; \
	echo "site backup done: $$saved saved, 0 failed"

site-saves: $(site_saves)

# The default LOG_DIR is made inside the repository only, never with the repository.
log_mkdir = $(if $(filter command line environment override,$(origin LOG_DIR)),mkdir -p,mkdir)

# One VM: saved with --vm NAME, its lines (timestamped) to LOG_DIR/NAME.log and stdout.
$(site_saves): site-save/%: need-repo
	@dir="$(VMS)/$(site_dir.$*)"; log="$(LOG_DIR)/$*.log"; \
	say() { line="$$(date -u +%Y-%m-%dT%H:%M:%SZ) $$*"; printf '%s\n' "$$line" >>"$$log"; printf '%s\n' "$$line"; }; \
	[ -d "$(LOG_DIR)" ] || $(log_mkdir) "$(LOG_DIR)" 2>/dev/null || [ -d "$(LOG_DIR)" ] || \
		{ echo "vm.mk: cannot make the folder of the VM logs $(LOG_DIR)" >&2; exit 2; }; \
	n=$$(find "$$dir" -maxdepth 1 -type f -name '*.vmx' | wc -l); \
	if [ "$$n" -ne 1 ]; then say "FAILED $*: $$n .vmx files in one folder; not a VM folder"; exit 1; fi; \
	how=plain; set --; \
	if [ -n "$$(find "$$dir" -maxdepth 1 -name '*.lck' -print -quit)" ]; then \
		how="at its snapshot (running)"; set -- --at-snapshot; \
	fi; \
	say "saving $*, $$how, from $$dir"; \
	out=$$($(vrepo_cmd) --wait "$(LOCK_WAIT)" save "$$dir" --vm="$*" "$$@" $(if $(MAX_CHAIN),--max-chain "$(MAX_CHAIN)") \
		-m "site backup $$(date -u +%Y-%m-%d)" 2>&1); status=$$?; \
	printf '%s\n' "$$out" | while IFS= read -r l; do if [ -n "$$l" ]; then say "  $*: $$l"; fi; done; \
	if [ "$$status" -ne 0 ]; then say "FAILED $* (vrepo exit $$status)"; exit "$$status"; fi; \
	say "saved $*"$(if $(SITE_STAMPS),; : >"$(SITE_STAMPS)/saved-$*")

# The VMs saved (SITE_STAMPS/saved-NAME), pruned by one vrepo prune: each keeps its own newest.
site-prune: need-repo
	@set --; \
	$(if $(SITE_STAMPS),for f in "$(SITE_STAMPS)"/saved-*; do if [ -e "$$f" ]; then set -- "$$@" --vm="$${f##*/saved-}"; fi; done;) \
	if [ "$$#" -eq 0 ]; then echo "vm.mk: prune skipped: no VM was saved"; \
	elif [ "$$(( $(KEEP_LAST) + $(KEEP_DAILY) + $(KEEP_WEEKLY) + $(KEEP_MONTHLY) ))" -eq 0 ]; then \
		echo "vm.mk: prune skipped: no retention policy"; \
	else \
		echo "prune of each VM saved: keep last $(KEEP_LAST), daily $(KEEP_DAILY), weekly $(KEEP_WEEKLY), monthly $(KEEP_MONTHLY)"; \
		$(vrepo_cmd) --wait "$(LOCK_WAIT)" prune --keep-last "$(KEEP_LAST)" --keep-daily "$(KEEP_DAILY)" \
			--keep-weekly "$(KEEP_WEEKLY)" --keep-monthly "$(KEEP_MONTHLY)" "$$@"; \
	fi
