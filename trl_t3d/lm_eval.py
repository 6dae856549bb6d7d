"""`python -m trl_t3d.lm_eval`: lm-evaluation-harness's command line with the `diffusion_lm` model registered.

lm-eval (0.4.13) has no plugin discovery for models, so `lm_eval --model diffusion_lm` cannot find a model that another
package defines; this entry point registers it and hands every argument to lm-eval unchanged:

```bash
python -m trl_t3d.lm_eval --model diffusion_lm --model_args pretrained=DIR,tokens_per_step=4 --tasks gsm8k
accelerate launch -m trl_t3d.lm_eval --model diffusion_lm --model_args pretrained=DIR --tasks gsm8k  # data parallel
```
"""

from __future__ import annotations


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    from trl_t3d.evaluation.lm_eval import model  # noqa: F401  (registers `diffusion_lm`)

    cli_evaluate()


if __name__ == "__main__":
    main()
