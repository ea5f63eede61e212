# Shared by run.sh and run_pose_offset.sh (sourced): the short LM run of the positions study. A small LM (d 64,
# 2 layers, 2 heads) at L = 32 on the stdlib corpus: 300 steps of batch 16 (154k tokens), scored at 1x-16x.
COMMON=(experiment=zoo_short model.d_model=64 model.n_layers=2 model.n_heads=2 seq_len=32 batch_size=16
        trainer.max_steps="$STEPS" trainer.precision=32-true 'eval.multipliers=[1,2,4,8,16]' eval.probes.probe=null)
