# locker — build, test, benchmark. `make help` lists the targets.
LUA_VERSION ?= 5.4
# how the clients of make chaos reach etcd (grpc or gateway)
TRANSPORT ?= gateway
LUA        ?= lua$(LUA_VERSION)
PREFIX     ?= /usr/local
DESTDIR    ?=
PKG_CONFIG ?= pkg-config
CC         ?= cc

# Where Lua's headers are: Debian's lua5.x or LuaJIT (make LUA_VERSION=jit).
ifeq ($(LUA_VERSION),jit)
LUA_PC     ?= luajit
LUA        := luajit
LUA_ABI    := 5.1
else
LUA_PC     ?= lua$(LUA_VERSION)
LUA_ABI    := $(LUA_VERSION)
endif
# Read once, when first used: after `make deps` installed what pkg-config
# reads (so `make deps all` works on a fresh machine).
LUA_CFLAGS ?= $(eval LUA_CFLAGS := $$(shell $(PKG_CONFIG) --cflags $(LUA_PC) 2>/dev/null))$(LUA_CFLAGS)
DEP_CFLAGS  = $(eval DEP_CFLAGS := $$(shell $(PKG_CONFIG) --cflags libcurl libcjson libprotobuf-c 2>/dev/null))$(DEP_CFLAGS)
DEP_LIBS    = $(eval DEP_LIBS := $$(shell $(PKG_CONFIG) --libs libcurl libcjson libprotobuf-c 2>/dev/null || echo -lcurl -lcjson -lprotobuf-c))$(DEP_LIBS)

WARN       = -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes \
             -Wno-unused-function $(if $(WERROR),-Werror)
OPT       ?= -O2 -g
CFLAGS    ?= $(OPT)
ALL_CFLAGS = -std=gnu99 -fPIC -fvisibility=hidden -Isrc $(WARN) $(LUA_CFLAGS) \
             $(DEP_CFLAGS) $(CFLAGS)
LDFLAGS   ?=
ALL_LDFLAGS = -shared -pthread $(LDFLAGS)

BUILD   ?= build/$(LUA_VERSION)
# two modules: locker.core (the engine and its binding, loaded only by the
# public module) and locker.process (processes and signals: src/process/,
# bound by src/binding/lprocess.c). src/'s folders are its layers (README,
# "Architecture"); includes name the folder: "base/buf.h".
PROC_SRCS = src/binding/lprocess.c src/process/proc.c src/process/guard.c
SRCS     = $(filter-out $(PROC_SRCS),$(wildcard src/*/*.c src/*/*/*.c))
OBJS     = $(SRCS:src/%.c=$(BUILD)/%.o)
PROC_OBJS = $(PROC_SRCS:src/%.c=$(BUILD)/%.o)
CORE     = $(BUILD)/locker/core.so
PROCESS  = $(BUILD)/locker/process.so

LMOD_DIR ?= $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)
CMOD_DIR ?= $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_ABI)

.PHONY: all help deps proto test check sanitize bench chaos fuzz tsan demo nginx-demo upstream-demo nginx-test ngx-build install uninstall lint clean

all: $(CORE) $(PROCESS) ## build locker/core.so and locker/process.so for LUA_VERSION (5.4 by default)

help: ## list the documented targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(BUILD)/%.o: src/%.c $(wildcard src/*/*.h src/*/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(CORE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $(OBJS) $(DEP_LIBS)

$(PROCESS): $(PROC_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $(PROC_OBJS)

# Debian packages the build and the tests need (idempotent; sudo when not root).
DEPS_DEB = gcc make pkg-config curl procps iproute2 libcurl4-openssl-dev libcjson-dev \
           lua5.4 liblua5.4-dev lua-busted lua-cjson etcd-server etcd-client openssl \
           python3-prometheus-client lua-luv lua-cqueues lua-copas lua-socket lua-http \
           libprotobuf-c-dev libnghttp2-dev
# nginx's Lua module links OpenResty's LuaJIT (luajit2): Debian's luajit and
# libluajit-5.1-dev conflict with it, so they are never asked for
NGINX_DEB = luajit2 libluajit2-5.1-dev nginx libnginx-mod-http-lua wrk
ifeq ($(LUA_VERSION),jit)
DEPS_DEB += luajit2 libluajit2-5.1-dev
else ifeq ($(LUA_VERSION),5.1)
DEPS_DEB += lua5.1 liblua5.1-0-dev
else ifneq ($(LUA_VERSION),5.4)
DEPS_DEB += lua$(LUA_VERSION) liblua$(LUA_VERSION)-dev
endif
deps: ## install the Debian packages needed to build and test
	@sh tools/install-deps $(DEPS_DEB)

# The gRPC transport's protobuf code, generated from the trimmed copy of
# etcd's API in src/transport/proto/ (committed: a build needs no protoc-c).
proto: ## regenerate src/transport/proto/*.pb-c.[ch] with protoc-c
	@sh tools/install-deps protobuf-c-compiler
	cd src/transport/proto && protoc-c --c_out=. kv.proto rpc.proto

lint: ## the thread boundary, the engine's layers, the rockspec's file list, luacheck
	@b=$$(grep -l -E '#include *[<"](lua|lauxlib|lualib|binding/compat)\.h' src/*/*.c | grep -v '^src/binding/' | tr '\n' ' '); \
	 test -z "$$b" || { echo "lint: only src/binding/ may include lua.h: $$b"; exit 1; }
	@sh tools/lint-layers
	@for f in src/*/*.c src/*/*/*.c lua/locker/*.lua; do grep -q "\"$$f\"" rockspec/*.rockspec || \
	   { echo "lint: $$f is not in the rockspec"; exit 1; }; done
	@sh tools/install-deps lua-check && luacheck -qq --no-color . >/dev/null || luacheck --no-color -q .

# libFuzzer needs clang and its runtime; make test fuzzes briefly, make fuzz long
FUZZ_DEB          = clang libclang-rt-14-dev
FUZZ_SECONDS      ?= 300
FUZZ_TEST_SECONDS ?= 10

# nginx's specs and demo use a LuaJIT build of the module (nginx's ABI)
ifeq ($(LUA_VERSION),jit)
NGX_BUILD ?= $(BUILD)
else
NGX_BUILD ?= $(BUILD)-jit
endif
ngx-build:
	@sh tools/install-deps $(NGINX_DEB)
	@$(MAKE) --no-print-directory LUA_VERSION=jit BUILD=$(NGX_BUILD) all

test: deps ## lint, fuzz briefly, and the specs on Lua 5.4, LuaJIT, 5.1, 5.3 and under ASan+UBSan (CI)
	@$(MAKE) --no-print-directory lint all $(BUILD)/faultproxy $(BUILD)/badgw $(BUILD)/badgrpc \
	   $(BUILD)/codec_probe.so ngx-build build/go-elect
	@sh tools/install-deps $(FUZZ_DEB) && sh fuzz/run $(FUZZ_TEST_SECONDS)
	@MAKE="$(MAKE)" BUILD=$(BUILD) NGX_BUILD=$(NGX_BUILD) sh tools/test-matrix

check: deps ## the quick loop: lint, build, and the specs on LUA_VERSION but the long ones (cluster, chaos, nginx), two at a time
	@$(MAKE) --no-print-directory lint all $(BUILD)/faultproxy $(BUILD)/badgw $(BUILD)/badgrpc \
	   $(BUILD)/codec_probe.so build/go-elect
	@LOCKER_BUILD=$(BUILD) LUA="$(LUA)" SPEC_JOBS=$${SPEC_JOBS:-2} \
	   SKIP_SPECS="$${SKIP_SPECS:-cluster chaos nginx nginx_upstream}" sh tools/run-specs

nginx-test: deps ## only the nginx specs (a real nginx with the Lua module, 2 workers)
	@$(MAKE) --no-print-directory all ngx-build
	@LOCKER_BUILD=$(BUILD) LOCKER_NGX_BUILD=$(NGX_BUILD) LUA="$(LUA)" SPECS="spec/nginx_spec.lua spec/nginx_upstream_spec.lua" sh tools/run-specs

nginx-demo: ## nginx gating on a record and holding its own, against a throwaway etcd
	@$(MAKE) --no-print-directory ngx-build
	@LOCKER_CPATH=$(CURDIR)/$(NGX_BUILD) LUA=luajit sh tools/with-etcd sh examples/nginx/run

upstream-demo: ## nginx balancing over live records: three backends register, one crashes and leaves rotation, comes back
	@$(MAKE) --no-print-directory ngx-build
	@sh tools/install-deps python3 curl
	@LOCKER_CPATH=$(CURDIR)/$(NGX_BUILD) LUA=luajit sh tools/with-etcd sh examples/upstream/run

example-http: deps all ## a lua-http service (over cqueues) with locker in its loop: its record, /api gated on a dependency's
	@LOCKER_CPATH=$(CURDIR)/$(BUILD) LUA=$(LUA) sh tools/with-etcd sh examples/http/run

sanitize: deps ## the specs with the core built under ASan + UBSan (not nginx's: nginx is not instrumented)
	@$(MAKE) --no-print-directory BUILD=build/sanitize \
	   OPT="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	   LDFLAGS="-fsanitize=address,undefined" all build/sanitize/faultproxy build/sanitize/badgw \
	   build/sanitize/badgrpc build/sanitize/codec_probe.so
	@LOCKER_BUILD=build/sanitize LUA="$(LUA)" LOCKER_SANITIZE=1 SKIP_SPECS="$${SKIP_SPECS:-nginx nginx_upstream}" sh tools/run-specs

LUA_ENV = LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;"

demo: deps ## the mesh-health cascade against a throwaway etcd
	@$(MAKE) --no-print-directory all
	@$(LUA_ENV) sh tools/with-etcd $(LUA) examples/mesh_health/demo.lua

$(BUILD)/floor: bench/floor.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -Wextra -o $@ bench/floor.c $(DEP_LIBS)

# The gRPC floor: the module's protobuf code, libcurl and libnghttp2.
FLOOR_GRPC_SRC = bench/floor_grpc.c src/transport/proto/rpc.pb-c.c src/transport/proto/kv.pb-c.c
$(BUILD)/floor-grpc: $(FLOOR_GRPC_SRC)
	@mkdir -p $(dir $@)
	$(CC) -std=gnu99 -O2 -Isrc $(WARN) $(DEP_CFLAGS) -o $@ $(FLOOR_GRPC_SRC) $(DEP_LIBS) \
	   $(shell $(PKG_CONFIG) --libs libnghttp2) -pthread

# The fault specs' proxy (not sanitized: it is a test tool, not the module).
$(BUILD)/faultproxy: tools/faultproxy.c
	@mkdir -p $(dir $@)
	$(CC) -std=c99 -O2 -Wall -Wextra -o $@ tools/faultproxy.c -lnghttp2

# The codec specs' test-only binding of the pure codecs (never installed).
CODEC_OBJS = $(addprefix $(BUILD)/,base/b64.o base/buf.o etcd/answers.o etcd/recipes.o transport/gateway.o engine/keys.o transport/tls.o)
$(BUILD)/codec_probe.so: spec/codec_probe.c $(CODEC_OBJS) $(wildcard src/*/*.h)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ spec/codec_probe.c $(CODEC_OBJS) $(DEP_LIBS)

# etcd's own Go election (clientv3/concurrency), for the election interop
# spec: built offline against Debian's packaged etcd sources, no module fetch.
GO_DEB = golang-go golang-etcd-server-dev
build/go-elect: tools/go-elect/main.go
	@sh tools/install-deps $(GO_DEB)
	@mkdir -p build/gocache
	cd tools/go-elect && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
	   GOCACHE=$(CURDIR)/build/gocache go build -o $(CURDIR)/build/go-elect .

# etcd's own Go lock (clientv3/concurrency.Mutex), timed beside locker by
# make bench (bench/transports.lua), built the same way.
build/go-mutex: bench/go-mutex/main.go
	@sh tools/install-deps $(GO_DEB)
	@mkdir -p build/gocache
	cd bench/go-mutex && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
	   GOCACHE=$(CURDIR)/build/gocache go build -o $(CURDIR)/build/go-mutex .

# The gateway specs' misbehaving etcd gateway (a test tool, not sanitized).
$(BUILD)/badgw: tools/badgw.c
	@mkdir -p $(dir $@)
	$(CC) -std=c99 -O2 -Wall -Wextra -o $@ tools/badgw.c

# The gRPC specs' misbehaving etcd gRPC server (HTTP/2 by nghttp2; a test
# tool, not sanitized).
$(BUILD)/badgrpc: tools/badgrpc.c
	@mkdir -p $(dir $@)
	$(CC) -std=c99 -O2 -Wall -Wextra -o $@ tools/badgrpc.c $(shell $(PKG_CONFIG) --libs libnghttp2)

fuzz: ## libFuzzer (ASan + UBSan): answer decoders, stream framer, base64; FUZZ_SECONDS each
	@sh tools/install-deps $(DEPS_DEB) $(FUZZ_DEB)
	@sh fuzz/run $(FUZZ_SECONDS)

tsan: deps ## a subset of the specs with the core under ThreadSanitizer
	@LUA="$(LUA)" LUA_VERSION=$(LUA_VERSION) MAKE="$(MAKE)" sh tools/tsan-specs

bench: deps ## speed and memory tables against a throwaway etcd: the gateway beside its floor, then gRPC, the gateway, gRPC floors and etcd's Go Mutex side by side (several minutes)
	@$(MAKE) --no-print-directory all $(BUILD)/floor $(BUILD)/floor-grpc build/go-mutex
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/nometrics CFLAGS="$(CFLAGS) -DLK_NO_METRICS" all
	@$(LUA_ENV) FLOOR=$(BUILD)/floor BENCH_NOMETRICS_CPATH="$(CURDIR)/$(BUILD)/nometrics/?.so" \
	   sh tools/with-etcd $(LUA) bench/bench.lua
	@$(LUA_ENV) GO_MUTEX=build/go-mutex FLOOR_GRPC=$(BUILD)/floor-grpc BENCH_LUA=$(LUA) \
	   sh tools/with-etcd $(LUA) bench/transports.lua

chaos: deps ## mutual exclusion under faults: 15 minutes against a 3-member etcd (CHAOS_ARGS="--election", "--limit 3": a semaphore, "--lock-delay 1"; TRANSPORT=grpc)
	@$(MAKE) --no-print-directory all $(BUILD)/faultproxy
	@$(LUA_ENV) LOCKER_TRANSPORT=$(TRANSPORT) LOCKER_FAULTPROXY=$(BUILD)/faultproxy $(LUA) tools/chaos.lua --seconds 900 $(CHAOS_ARGS)

install: all ## install the modules (PREFIX, DESTDIR)
	install -d $(LMOD_DIR)/locker $(CMOD_DIR)/locker
	install -m 644 lua/locker/*.lua $(LMOD_DIR)/locker/
	install -m 755 $(CORE) $(CMOD_DIR)/locker/core.so
	install -m 755 $(PROCESS) $(CMOD_DIR)/locker/process.so
	install -d $(DESTDIR)$(PREFIX)/bin
	sed '1s|.*|#!/usr/bin/env $(LUA)|' bin/locker > $(DESTDIR)$(PREFIX)/bin/locker
	chmod 755 $(DESTDIR)$(PREFIX)/bin/locker

uninstall: ## remove what install put there (PREFIX, DESTDIR)
	rm -f $(addprefix $(LMOD_DIR)/locker/,$(notdir $(wildcard lua/locker/*.lua)))
	rm -f $(CMOD_DIR)/locker/core.so $(CMOD_DIR)/locker/process.so $(DESTDIR)$(PREFIX)/bin/locker
	-rmdir $(LMOD_DIR)/locker $(CMOD_DIR)/locker 2>/dev/null

clean: ## remove build output
	rm -rf build
