"""OmniForcing distillation engine: teacher, Stage I-III and FSDP2 training (not imported by inference)."""
