"""The training config: every setting a run depends on, saved as training_args.json beside the weights."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from onegen.default_model import DEFAULT_MODEL_NAME
RETRIEVAL_KINDS = ("bpr", "infonce")  # the retrieval losses (onegen.loss)
STRATEGIES = ("ddp", "fsdp")
SCORE = "eval_inkb_f1"  # checkpoint score: InKB micro F1 on the eval split (what the injected evaluation returns)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as training_args.json beside the weights."""

    train: str  # training documents: AIDA TSV or NIF file
    kb: str  # KB JSONL (DESIGN section 4): positives and negatives are drawn from it
    output: str  # folder of the final model (adapter or full weights), tokenizer and model card
    base: str = DEFAULT_MODEL_NAME  # base model: embedded default name, model folder or cached hub id
    init: str | None = None  # saved model of the same kind (adapter or full weights) to start from; None: the base
    split: str | None = "train"  # AIDA split of `train` (None: every document; must be None for NIF)
    train_examples: int | None = None  # train on a seeded sample of this many examples (None: all of them)
    aliases: str | None = None  # mention<TAB>entity<TAB>count table for hard negatives (same-alias entities)
    silver_docs: int = 0  # KB descriptions added as training documents (onegen.silver), a seeded sample; 0: none
    silver_exclude: str | None = None  # data folder (aida/, gerbil/) whose evaluation texts no silver document may share
    case_augment: float = 0.0  # share of the training documents also added upper- or lower-cased (onegen.silver)
    lora: int | None = 16  # LoRA rank on every linear layer; None = full fine-tuning
    lora_alpha: int | None = None  # LoRA alpha; None = 2 * rank
    lora_dropout: float = 0.05
    loss: str = "bpr"  # retrieval loss: "bpr" (4 hard negatives per anchor) or "infonce" (in-batch)
    temperature: float = 0.02  # InfoNCE temperature
    retrieval_weight: float = 1.0  # lambda_ret: the retrieval loss's weight next to the generation CE's 1
    epochs: int = 1
    schedule_epochs: int | None = None  # epochs the learning-rate schedule spans (None: `epochs`); more than
    #                                     `epochs` stops the run part-way down its decay
    lr: float | None = None  # peak learning rate; None = 2e-4 with LoRA, 5e-5 for full fine-tuning
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_ratio: float = 0.03  # linear warm-up over this fraction of the steps, then linear decay to 0
    max_grad_norm: float = 1.0  # gradient clipping
    max_length: int = 1024  # tokens per training example (prompt + marked target)
    batch_size: int = 4  # examples per worker per micro-batch (entity rows come on top)
    grad_accum: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute layer activations in backward: far less memory, ~1.3x compute
    share_prefix: bool = True  # forward the prompt prefixes every row shares once per batch (onegen.shared_prefix):
    #                            the same loss and gradients from fewer tokens; off for FSDP and non-sdpa attention
    group_by_length: bool = False  # batches of examples of similar length (loop.LengthGroupedSampler): less padding
    #                                where long and short documents mix (silver text); one worker only
    num_negatives: int = 4  # hard negatives per anchor
    mine_negatives: bool = False  # before each epoch, the entities the model ranks above the gold one lead each
    #                               anchor's negatives (onegen.mining; every worker embeds the whole KB)
    every_mention: bool = False  # with mine_negatives: every linked mention is an anchor (else one per sentence)
    num_workers: int = 1  # Ray Train workers (one GPU each with use_gpu)
    cpus_per_worker: int = 1  # CPU cores per worker; torch uses as many threads (Ray's default for a worker is 1)
    use_gpu: bool = False  # train on GPUs
    bf16: bool | None = None  # bf16 autocast over float32 master weights; None: on GPUs, and on CPUs that multiply
    #                           bf16 natively (AVX512-BF16 or AMX: 1.5x the tokens/s of float32, bench/train_speed.py)
    strategy: str = "ddp"  # "ddp" (replicas) or "fsdp" (sharded, for 7B models; GPUs only)
    eval: str | None = None  # eval documents (AIDA TSV or NIF); None = no per-epoch evaluation
    eval_split: str | None = "testa"  # AIDA split of `eval` (None for NIF)
    eval_docs: int | None = None  # score a seeded sample of this many eval documents (None: all)
    eval_kb_size: int | None = None  # link against the eval gold entities plus random KB entities up to this size
    eval_batch_size: int = 8  # texts per annotate call
    redirects: str | None = None  # from<TAB>to title redirects: scoring, and mined negatives never redirect to gold
    max_steps: int | None = None  # stop after this many optimizer steps in all (checkpointing there)
    seed: int = 0
    resume: bool = False  # continue the run stored under `storage` from its latest checkpoint
    storage: str | None = None  # checkpoint folder (Ray Train's storage, or fit's); None = OUTPUT/ray
    num_to_keep: int = 2  # checkpoints kept (the best by eval F1, or the latest; the latest always)

    def __post_init__(self):
        if self.loss not in RETRIEVAL_KINDS:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {RETRIEVAL_KINDS}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if self.strategy == "fsdp" and not self.use_gpu and self.num_workers > 1:
            raise ValueError("strategy 'fsdp' shards over GPUs: pass use_gpu (--use-gpu) or use strategy 'ddp' on CPU")
        for name in ("epochs", "batch_size", "grad_accum", "num_workers", "cpus_per_worker", "num_to_keep", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_examples", "max_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or None for no limit), got {getattr(self, name)}")
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ValueError(f"schedule_epochs must be >= epochs (got schedule_epochs: {self.schedule_epochs} "
                             f"and epochs: {self.epochs})")
        if self.mine_negatives and self.strategy == "fsdp":
            raise ValueError("mine_negatives runs the whole model on each worker, which FSDP shards: use strategy 'ddp'")
        if self.every_mention and not self.mine_negatives:
            raise ValueError("every_mention needs mine_negatives (the extra anchors get their negatives from mining)")
        if self.group_by_length and self.num_workers > 1:
            raise ValueError("group_by_length orders one worker's batches; with num_workers > 1 each worker's "
                             "DistributedSampler decides the order: drop group_by_length")
        if not self.retrieval_weight > 0:
            raise ValueError(f"retrieval_weight must be > 0 (0 would train no retrieval), got {self.retrieval_weight}")
        if self.silver_docs < 0:
            raise ValueError(f"silver_docs must be >= 0, got {self.silver_docs}")
        if self.silver_docs and not self.silver_exclude:
            raise ValueError("silver_docs needs silver_exclude (--silver-exclude DATA_DIR): the folder of the evaluation "
                             "sets no silver document may share text with")
        if not 0 <= self.case_augment <= 1:
            raise ValueError(f"case_augment is a share of the documents, in [0, 1], got {self.case_augment}")
        if self.lora is not None and self.lora < 1:
            raise ValueError(f"lora rank must be >= 1 (or None for full fine-tuning), got {self.lora}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from plain values; an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    @property
    def learning_rate(self) -> float:
        """The peak learning rate: `lr`, else the default of LoRA or of full fine-tuning."""
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.lora is not None else 5e-5

    @property
    def storage_path(self) -> Path:
        """The absolute folder the run's checkpoints live under."""
        return Path(self.storage or Path(self.output) / "ray").resolve()
