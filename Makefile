# fprnn: thin wrapper around CMake. `make test` and `make demo` work on a fresh machine: they first run
# scripts/setup.sh, which installs the Debian packages and LibTorch if they are missing.
BUILD_DIR  ?= build
BUILD_TYPE ?= Release
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=
export CCACHE_SLOPPINESS := pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_DIR ?= $(HOME)/.cache/ccache

.PHONY: all setup configure build test demo bench clean

all: build

setup:
	@BUILD_DIR=$(abspath $(BUILD_DIR)) scripts/setup.sh

$(BUILD_DIR)/build.ninja: CMakeLists.txt | setup
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DCMAKE_PREFIX_PATH="$$(cat $(BUILD_DIR)/.torch_prefix)" $(CMAKE_ARGS)

configure: setup $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)

demo: build
	scripts/demo.sh $(BUILD_DIR)/fprnn runs/demo

bench: build
	$(BUILD_DIR)/fprnn bench

clean:
	rm -rf $(BUILD_DIR)
