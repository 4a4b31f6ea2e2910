"""The OpenAI Batch API inside the serving app: /v1/files and /v1/batches, run by Ray Data.

- formats.py: OpenAI's File and Batch objects, output/error lines, input validation (pure).
- store.py: files and batch records in a directory or object store (pyarrow.fs).
- endpoints.py: the route table; routes.py: the HTTP layer inside the gateway.
- runner.py: the BatchRunner Serve deployment that validates and runs batches with
  `ray.data.llm` on the app's own engine deployments.
"""
