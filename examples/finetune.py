"""Fine-tune Speeder on a sequential-recommendation dataset, evaluate it, save it, reload it and recommend.

    python examples/finetune.py                                   # the `make demo` budget on embedded Amazon Beauty
    python examples/finetune.py --dataset movielens --llm /path/to/llm --stage_steps 500 --max_train_samples -1
    accelerate launch examples/finetune.py --bf16 ...             # multi-GPU / DeepSpeed / FSDP, unchanged

Every field of `speeder_hf_train.arguments.FinetuneArguments` is a flag (`--help` lists them).
"""

import json
import logging

from transformers import HfArgumentParser

from speeder_hf_train.arguments import FinetuneArguments
from speeder_hf_train.finetune import run_finetune


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = HfArgumentParser(FinetuneArguments).parse_args_into_dataclasses()
    results = run_finetune(args)
    if not results.get("main_process", True):
        return  # under accelerate launch / torchrun the main process reports, saves and publishes
    print("\nTest metrics:", json.dumps(results["metrics"], indent=2))
    print(f"Model saved to {args.output_dir} (wall time {results['wall_seconds'] / 60:.1f} min)")
    if args.push_to_hub:
        from speeder_hf.hub.publishing import publish_folder

        print("Published:", publish_folder(args.output_dir, args.push_to_hub))


if __name__ == "__main__":
    main()
