"""T5 instruction tuning: one training run, from token ids to checkpoints and zero-shot metrics.

- `models`    named T5 shapes from scratch or `from_pretrained`; tokenizers; precision (torch/transformers only)
- `engine`    length-grouped batches, dynamic padding, fused AdamW, schedule, accumulation (torch only)
- `prepare`   study -> tasks -> variant -> Tk-Instruct prompts -> token ids, once in the driver
- `evaluate`  batched greedy generation on the test prompts
- `reporter`  how the loop reports and resumes: plain process / torchrun, Ray Train, Ray Tune
- `loop`      the per-worker training loop (`run_worker`), the same under every driver
- `runner`    the Ray Train `TorchTrainer` run and the `itstudy train` command
- `bench`     throughput against Hugging Face's Seq2SeqTrainer (runs with torch + transformers alone)
- `fast_t5`   `model.implementation: fast`: a compact T5 with HF's weight layout; `fast_generate` its KV-cached greedy decoding
- `bench_eval` fast T5 generation against HF `generate`; `fast_check` the fast T5 against HF at a real shape (GPU check)
- `prompt_lengths` the SuperNI prompt lengths the benchmark's examples take, and how they are measured

Nothing is imported here, so `python -m itstudy.training.bench` needs neither Ray nor MLflow.
"""
