# The two commands of the README. Both use the Python on PATH (a virtual environment is best)
# and install into it first; make prints each command before it runs it.
PYTHON ?= python
# Extra pip options for the install, e.g. PIP_FLAGS=--no-compile (CI: Python then compiles only the modules it
# imports, when it first imports them, instead of every file of every package at install time).
PIP_FLAGS ?=

# The ipywidgets HTML manager renders the widgets' saved state in the built book. No PyPI package
# ships it, npm does: fetched once into book/_static/widgets (not committed), served from _static.
WIDGETS = book/_static/widgets
HTML_MANAGER = @jupyter-widgets/html-manager@^1.0.15

.PHONY: help install book test clean

help:
	@echo "make book   install what the book needs, execute every chapter, build _build/html/index.html"
	@echo "make test   the same installs, then: unit tests, every chapter in the fast size, the build"
	@echo "make clean  remove _build"

install: $(WIDGETS)/embed.js
	@echo "installing the requirements and lmbook into $$($(PYTHON) -c 'import sys; print(sys.prefix)') (quietly) ..."
	$(PYTHON) -m pip install --quiet --disable-pip-version-check $(PIP_FLAGS) -r requirements.txt -e .

$(WIDGETS)/embed.js:
	@command -v npm >/dev/null || { echo "npm fetches $(HTML_MANAGER) (Debian: apt-get install npm)"; exit 1; }
	rm -rf $(WIDGETS).tmp && mkdir -p $(WIDGETS).tmp
	cd $(WIDGETS).tmp && npm pack --silent "$(HTML_MANAGER)" >/dev/null
	tar -xzf $(WIDGETS).tmp/*.tgz -C $(WIDGETS).tmp --strip-components=2 --exclude='*.map' --exclude='*amd.js' package/dist
	rm -f $(WIDGETS).tmp/*.tgz && rm -rf $(WIDGETS) && mv $(WIDGETS).tmp $(WIDGETS)

# The size follows the hardware (full with a CUDA GPU, else fast) unless LMBOOK_SIZE is set.
book: install
	LMBOOK_SIZE=$${LMBOOK_SIZE:-$$($(PYTHON) -c "from lmbook.runtime import size; print(size())")} $(PYTHON) -m pytest -m book

test: install
	LMBOOK_SIZE=$${LMBOOK_SIZE:-fast} LMBOOK_LANES=$${LMBOOK_LANES:-2} $(PYTHON) -m pytest

clean:
	rm -rf _build
