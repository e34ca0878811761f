# Two commands set everything up on a fresh machine (Python 3.11+, make):
#   make run    install into .venv, then apply the example definitions to the embedded SQLite database
#   make test   install into .venv (with the dev tools), then run the tests
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint clean lambda-zip

install: $(STAMP)

# checkov pins an older boto3 than the project's: it gets a venv of its own, under the project's.
CHECKOV := $(VENV)/tools/checkov/bin/checkov

$(STAMP): pyproject.toml package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# axe-core, which the browser tests inject to check the console's accessibility (package.json);
	# without npm they skip those checks (and fail under CI).
	if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --silent; \
	else echo "npm not found: the browser tests' accessibility checks will skip" >&2; fi
	$(PYTHON) -m venv $(VENV)/tools/checkov
	$(VENV)/tools/checkov/bin/python -m pip install --quiet 'checkov>=3.2,<4'
	touch $(STAMP)

# The main job: apply the example definitions to the embedded SQLite database (flux-control.db), then
# show the plan (which is empty once applied).
run: $(STAMP)
	$(BIN)/flux-control validate definitions
	$(BIN)/flux-control apply definitions
	$(BIN)/flux-control plan definitions

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy controller .github/scripts tests bench
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# The Lambda deployment zip for deploy/template.yaml: the package and what the function imports, from
# deploy/lambda-requirements.lock (hashes checked), compiled to bytecode, for ARCH (x86_64 or arm64, as the
# template's Architecture). Needs PyPI and Python 3.11 (the template's Runtime), not the venv.
ARCH ?= x86_64
lambda-zip:
	$(PYTHON) deploy/build_lambda_zip.py --out build/lambda.zip --architecture $(ARCH)
