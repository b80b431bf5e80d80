# labkit — `make lab` opens the lab, `make test` runs every check. Both run `setup` first.
#
# setup: system packages (apt, only what is missing), .venv from the system python3,
# `pip install -e .[test]`, both native modules (release + sanitizer), and the sandbox's
# guest kernel (built once from Debian's kernel source, cached in ~/.cache/labkit). Stamp
# files in build/stamps/ make a second run take a moment; editing native/ rebuilds the
# modules.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := lab
.DELETE_ON_ERROR:

# The system interpreter, not one from PATH: Debian's python3-dev matches it, and a
# fresh machine has no other.
PYTHON_SYS ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := build/stamps
NATIVE_SRC := $(wildcard native/include/*.h native/src/*/*.c native/src/*/*.h) labkit/build.py
LAB_PORT ?= 8888
START_NOTEBOOK := notebooks/00-start-here.ipynb

# clang alone lacks the compiler-rt archives libFuzzer and ASan link against: libclang-rt-dev.
# The guest kernel's build needs flex, bison, bc and xz; its source comes from the Debian
# archive, whose signatures apt checks with debian-archive-keyring (on Ubuntu too).
APT_PACKAGES := build-essential pkg-config python3 python3-venv python3-dev liburing-dev \
	libssl-dev libsodium-dev libffi-dev clang libclang-rt-dev procps iproute2 kmod \
	flex bison bc xz-utils debian-archive-keyring
# Installed when the distribution offers them; commas separate alternatives. perf is
# linux-perf on Debian and linux-tools-generic on Ubuntu; Ubuntu ships chromium as a snap
# rather than a deb, so there the browser tests need a chromium from elsewhere.
APT_OPTIONAL := linux-perf,linux-tools-generic chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -q -y

# The sanitizer pass: conformance, adversarial and parser tests against
# labkit._native_asan.  ASan makes the relay ~7x slower, so conformance runs on modes
# that between them reach every code path (both backends, TLS, 1/2/4 workers and the
# cross-shard rings, per-connection receive buffers, both overload policies and both
# io_uring receive paths) rather than the whole matrix.
SANITIZE_TESTS ?= tests/conformance tests/adversarial tests/test_overload.py \
                  $(wildcard tests/test_*pars*.py)
SANITIZE_MODES ?= epoll-off-w1,epoll-user-w2,uring-off-w4,uring-user-w1,uring-no-provided-buffers,uring-poll-recv,uring-gather-wait,uring-no-defer-taskrun,epoll-backpressure-w2

.PHONY: setup lab test clean fuzz guest-kernel

setup: $(STAMPS)/apt $(STAMPS)/venv build/native-release/build.json build/native-asan/build.json \
	guest-kernel

$(STAMPS)/apt: Makefile
	@installed() { [ "$$(dpkg-query -W -f='$${Status}' "$$1" 2>/dev/null)" = "install ok installed" ]; }; \
	offered() { apt-cache policy "$$1" 2>/dev/null | grep "Candidate: [^(]" >/dev/null; }; \
	missing=""; optional=""; \
	for p in $(APT_PACKAGES); do installed "$$p" || missing="$$missing $$p"; done; \
	for group in $(APT_OPTIONAL); do \
	  have=0; for p in $${group//,/ }; do installed "$$p" && have=1; done; \
	  [ $$have = 1 ] || optional="$$optional $$group"; \
	done; \
	if [ -n "$$missing$$optional" ]; then \
	  if [ -n "$(SUDO)" ] && ! command -v sudo >/dev/null; then \
	    echo "setup: need root or sudo to install:$$missing$$optional" >&2; exit 1; fi; \
	  echo "setup: apt-get update"; \
	  $(APT) update; \
	  for group in $$optional; do \
	    for p in $${group//,/ }; do \
	      if offered "$$p"; then missing="$$missing $$p"; break; fi; \
	    done; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "setup: apt-get install$$missing"; \
	    $(APT) install --no-install-recommends $$missing; \
	  fi; \
	fi
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/venv: pyproject.toml setup.py | $(STAMPS)/apt
	@$(PYTHON_SYS) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "setup: labkit needs Python >= 3.11; $(PYTHON_SYS) is $$($(PYTHON_SYS) -V 2>&1)." \
	       "Set PYTHON_SYS=/path/to/python3.11+" >&2; exit 1; }
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[test]'
	@touch $@

# pip's build above also made labkit._native; this rebuilds it whenever native/ changes
# and checks that the result loads (build.json records every compiler command).
build/native-release/build.json: $(STAMPS)/venv $(NATIVE_SRC)
	$(PY) -m labkit.build

build/native-asan/build.json: $(STAMPS)/venv $(NATIVE_SRC)
	$(PY) -m labkit.build --sanitize

# The sandbox's guest kernel (labkit/hosts/guest_kernel.py): a no-op once it is cached.
guest-kernel: $(STAMPS)/venv
	@$(PY) -m labkit.hosts.guest_kernel ensure

# The port is checked before a token URL is printed: a second `make lab` would otherwise
# print a URL that works against nothing, then fail on the port.
lab: setup
	@$(PY) -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, \
	  socket.SO_REUSEADDR, 1); sys.exit(s.connect_ex(("127.0.0.1", $(LAB_PORT))) == 0)' || { \
	  echo "labkit lab: port $(LAB_PORT) on 127.0.0.1 is already in use (another \`make lab\`?):" \
	    "open the URL that one printed, stop it with Ctrl-C, or use \`make lab LAB_PORT=8890\`" >&2; \
	  exit 2; }
	@token=$$($(PY) -c 'import secrets; print(secrets.token_hex(24))'); \
	url="http://127.0.0.1:$(LAB_PORT)/lab/tree/$(START_NOTEBOOK)?token=$$token"; \
	printf '\n  labkit lab: open this URL in your browser (Ctrl-C here stops the lab)\n'; \
	printf '    %s\n\n' "$$url"; \
	exec $(VENV)/bin/jupyter lab --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) \
	  --ServerApp.port_retries=0 --IdentityProvider.token="$$token" \
	  --ServerApp.default_url=/lab/tree/$(START_NOTEBOOK) \
	  --ServerApp.custom_display_url="$$url" \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

# Three passes; the first failure stops make with a non-zero exit. The sanitizer pass
# preloads gcc's ASan/UBSan runtimes into python (the instrumented module cannot load
# otherwise), turns leak detection off (CPython never frees everything at exit), and
# uses plain malloc so Python buffers handed to C get ASan redzones.
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest
	LABKIT_SANITIZE=1 LABKIT_MODES=$(SANITIZE_MODES) ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
	  LD_PRELOAD="$$($(PY) -c 'from labkit.build import sanitizer_preload as p; print(p())')" \
	  $(PY) -m pytest $(SANITIZE_TESTS)

# libFuzzer harnesses (native/fuzz/), ASan + UBSan, with Debian's clang. Each runs for
# FUZZ_SECONDS; what it learns goes to build/fuzz/corpus/<name>, the committed seeds in
# native/fuzz/corpus/<name> are read too. A crash leaves build/fuzz/crash-* and fails make.
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ_TARGETS := http client_info session websocket
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -pthread \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Inative/include -Inative/src
# fuzz_session #includes worker.c (for its static timer pass) and drives the rest directly.
FUZZ_SESSION_SRC := $(filter-out native/src/relay/worker.c native/src/relay/relay.c \
	native/src/io/io_uring.c native/src/load/%.c,$(wildcard native/src/*/*.c))

build/fuzz/fuzz_http: native/fuzz/fuzz_http.c native/src/proto/http.c \
		native/src/proto/websocket.c native/include/labkit.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(filter %.c,$^) -o $@ -lcrypto

build/fuzz/fuzz_websocket: native/fuzz/fuzz_websocket.c native/src/proto/websocket.c \
		native/src/proto/websocket.h native/include/labkit.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(filter %.c,$^) -o $@ -lcrypto

build/fuzz/fuzz_client_info: native/fuzz/fuzz_client_info.c native/src/proto/client_info.c \
		native/include/labkit.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(filter %.c,$^) -o $@

build/fuzz/fuzz_session: native/fuzz/fuzz_session.c $(NATIVE_SRC)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) native/fuzz/fuzz_session.c $(FUZZ_SESSION_SRC) -o $@ \
	  -lsodium -lssl -lcrypto

fuzz: $(STAMPS)/apt $(addprefix build/fuzz/fuzz_,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus/$$t; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=build/fuzz/ build/fuzz/corpus/$$t native/fuzz/corpus/$$t \
	    2>build/fuzz/$$t.log || { tail -n 60 build/fuzz/$$t.log >&2; exit 1; }; \
	  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' build/fuzz/$$t.log \
	    | sed "s/^/  $$t /"; \
	done

clean:
	rm -rf $(VENV) build labkit/_native*.so labkit.egg-info .pytest_cache .ruff_cache
	find labkit tests -name __pycache__ -prune -exec rm -rf {} +
