# The two commands of the README. Both use the Python on PATH (a virtual environment is best)
# and install into it first; make prints each command before it runs it.
PYTHON ?= python

.PHONY: help install book test clean

help:
	@echo "make book   install what the book needs, execute every chapter, build _build/html/index.html"
	@echo "make test   the same installs, then: unit tests, every chapter in the fast size, the build"
	@echo "make clean  remove _build"

install:
	$(PYTHON) -m pip install -r requirements.txt -e .

# The size follows the hardware (full with a CUDA GPU, else fast) unless LMBOOK_SIZE is set.
book: install
	LMBOOK_SIZE=$${LMBOOK_SIZE:-$$($(PYTHON) -c "from lmbook.runtime import size; print(size())")} $(PYTHON) -m pytest -m book

test: install
	LMBOOK_SIZE=$${LMBOOK_SIZE:-fast} $(PYTHON) -m pytest

clean:
	rm -rf _build
