# Shared by run.sh and run_randomized.sh (sourced): the per-task settings and the model, chosen by the calibration
# in README.md. Training sizes are drawn uniformly in [1, train_size]; scored at 1x-8x train_size. niah_multikey with
# one needle is RULER's single-key needle (the multi-key versions, 2 and 4 needles, were not learned in the budget).
# Parity takes 6000 steps: at 3000, 15 of 24 runs stayed at chance at 1x (README.md, calibration).
declare -A SETTINGS=(
  [copy]="data.task.train_size=6 data.task.alphabet=8 trainer.max_steps=3000"
  [reverse]="data.task.train_size=6 data.task.alphabet=8 trainer.max_steps=3000"
  [sort]="data.task.train_size=6 data.task.alphabet=8 trainer.max_steps=3000"
  [parity]="data.task.train_size=8 trainer.max_steps=6000"
  [niah_multikey]="data.task.train_size=16 data.task.needles=1 trainer.max_steps=1500"
)
MODEL=(model.d_model=64 model.n_layers=2 model.n_heads=2 trainer.val_check_interval=500 trainer.limit_val_batches=2
       trainer.enable_progress_bar=false optim.warmup_steps=50
       'eval.probes.tasks.multipliers=[1,2,4,8]' eval.probes.tasks.instances=200)
# T5 with every bucket trained at each task's training length L (issue 32; lenx.checks.t5_fit gives these, and
# training warns without them): T5's default 32 buckets up to distance 128 leave most buckets untrained at L = 10-24
# (13 tokens: buckets 13-31), so T5 gets fewer buckets and max_distance = L, the regime of its papers (L >= 512).
declare -A T5_FIT=(
  [copy]="pos.num_buckets=12 pos.max_distance=13"
  [reverse]="pos.num_buckets=12 pos.max_distance=13"
  [sort]="pos.num_buckets=12 pos.max_distance=13"
  [parity]="pos.num_buckets=10 pos.max_distance=10"
  [niah_multikey]="pos.num_buckets=22 pos.max_distance=24"
)
