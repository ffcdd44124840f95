.PHONY: demo test

demo:
	pip install -e ".[test]" && python -m tensorcache.demo

test:
	pip install -e ".[test]" && python -m pytest -n 2 tests
