#!/usr/bin/env bash
# Reproduce the shipped synthroad models in models/ (CPU, reduced schedule; see models/*.md).
#
#   bash bench/train_shipped.sh [RUN_DIR]        # default RUN_DIR=/tmp/csl_runs
#
# Steps: render the in-distribution training frames once into ~/.cache/csl_ros/synthroad (seeds 0..999,
# obstacles="none"), train the closed-set segmenter, fine-tune it with synthetic negatives (patches of
# the same in-distribution frames pasted on the road: outlier exposure without OOD data), fit its SML
# statistics / calibration on validation seeds 1,000,000+, train the class-agnostic student, then the
# scheme-1 student (initialised from the class-agnostic one, distilled from the frozen SML teacher), and
# register every file in models/manifest.json with its SHA-256. No OOD data (and no obstacle of the
# test generator) is used anywhere.
set -euo pipefail
R=${1:-/tmp/csl_runs}
M=$(cd "$(dirname "$0")/.." && pwd)/models
mkdir -p "$R" "$M"
CSL=${CSL:-csl-ros}

# Mask split minimum 25 px: the spec's 100 px is for 512x1024 crops; our 128x256 crops have 1/16 of the
# pixels, so 25 px still keeps small objects (poles, signs, far cars) as regions of their own.
STUDENT_COMMON=(--set student.preset=r18_lite --set data.synth_frames=1000 --set data.crop_height=128
  --set data.crop_width=256 --set data.min_scale=0.5 --set data.max_scale=1.25 --set data.min_component_area=25
  --set optim.batch_size=4 --set optim.lr=5e-4 --set optim.backbone_lr_multiplier=1.0 --set student.num_points=2048
  --set run.threads=2 --set run.checkpoint_every=250 --set run.log_every=50)

# 1. training frames (shared by every step)
$CSL train student --prepare-only --set data.synth_frames=1000

# 2. closed-set segmenter (teacher base), LR-ASPP MobileNetV3, from scratch
$CSL train segmenter --out "$R/segmenter" --set frames=1000 --set render_size=256x512 \
  --set crop_size=128x256 --set scale_range=0.5,1.25 --set steps=4000 --set batch_size=8 --set lr=1e-3 \
  --set num_threads=1 --set checkpoint_every=500 --set val_frames=100 \
  --export "$M/teacher_segmenter_closed_set.safetensors"

# 3. its SML statistics + global calibrations on in-distribution validation frames (for step 5); every
#    segmenter step below refits its own the same way (FILE.safetensors -> FILE.stats.json)
fit_stats() {
  $CSL teacher fit-stats --segmenter "$1" --data synthroad --first-seed 1000000 --frames 200 --size 256x512 \
    --out "${1%.safetensors}.stats.json"
}
fit_stats "$M/teacher_segmenter_closed_set.safetensors"

# 4. class-agnostic CSL student (the paper's training: in-distribution frames, mask split)
$CSL train student --scheme ca --out "$R/student_ca" "${STUDENT_COMMON[@]}" --set optim.max_steps=4000

# 4b. the shipped class-agnostic student (scheme 2 default): step 4 fine-tuned with synthetic negatives
#     pasted on the road as regions of their own (data.negatives_max; half of them patches of other
#     training frames, half plain colour fields; csl_ros.training.negatives), in two runs (the second
#     from the first's weights, with another sample draw). No OOD data, nothing from the obstacle generator.
NEG=(--set data.negatives_max=4 --set data.negative_colour_fraction=0.5 --set optim.max_steps=1500)
$CSL train student --scheme ca --out "$R/student_ca_neg" "${STUDENT_COMMON[@]}" "${NEG[@]}" --set optim.lr=2e-4 \
  --set student.init_from="$R/student_ca/student.safetensors"
$CSL train student --scheme ca --out "$R/student_ca_neg2" "${STUDENT_COMMON[@]}" "${NEG[@]}" --set optim.lr=1.5e-4 \
  --set run.seed=1 --set student.init_from="$R/student_ca_neg/student.safetensors" \
  --export "$M/student_ca.safetensors" --export-dtype int8
# 4c. a third fine-tuning with flat and grey negatives (width/height up to 6: planks and lumps lying on the
#     road; colour fields of any saturation down to grey), the same two changes as the teacher's step 6''.
#     Chosen with it on the tuning drives (step 6b). It starts from step 4b's int8 export (as the shipped run did).
$CSL train student --scheme ca --out "$R/student_ca_neg3" "${STUDENT_COMMON[@]}" "${NEG[@]}" --set optim.max_steps=1000 \
  --set optim.lr=1e-4 --set run.seed=2 --set data.negative_max_aspect=6 --set data.negative_min_saturation=0 \
  --set student.init_from="$M/student_ca.safetensors" \
  --export "$M/student_ca.safetensors" --export-dtype int8

# 4d. a fourth fine-tuning: step 4c's recipe again from its int8 export, 1200 steps, another sample draw
#     (run.seed=3). Chosen in step 6c on the tuning drives.
$CSL train student --scheme ca --out "$R/student_ca_neg4" "${STUDENT_COMMON[@]}" "${NEG[@]}" --set optim.max_steps=1200 \
  --set optim.lr=1e-4 --set run.seed=3 --set data.negative_max_aspect=6 --set data.negative_min_saturation=0 \
  --set student.init_from="$M/student_ca.safetensors" \
  --export "$M/student_ca.safetensors" --export-dtype int8

# 4e. a fifth fine-tuning: step 4d's recipe from its int8 export at the second pass's scale (frames rendered
#     at 512x1024, crops at scale 0.25..1, as the teacher's step 6'''), 1200 steps, run.seed=4. Chosen in
#     step 6e on the tuning drives.
$CSL train student --scheme ca --out "$R/student_ca_neg5" "${STUDENT_COMMON[@]}" "${NEG[@]}" --set optim.max_steps=1200 \
  --set optim.lr=1e-4 --set run.seed=4 --set data.negative_max_aspect=6 --set data.negative_min_saturation=0 \
  --set data.synth_height=512 --set data.synth_width=1024 --set data.min_scale=0.25 --set data.max_scale=1.0 \
  --set student.init_from="$M/student_ca.safetensors" \
  --export "$M/student_ca.safetensors" --export-dtype int8

# 5. scheme-1 student: + distillation head, Huber loss against the frozen SML teacher of step 2 (the
#    shipped scheme-1 student was distilled before step 6 existed). lambda_d = 100:
#    the teacher's calibrated maps are near 0 on in-distribution frames, so with the spec's lambda_d = 1
#    the Huber term is ~1/6000 of the loss and the shared features never serve the distillation.
#    Huber delta 0.1 (the training default): on [0, 1] maps the spec's delta = 1 is plain 0.5 * MSE.
$CSL train student --scheme 1 --out "$R/student_scheme1" "${STUDENT_COMMON[@]}" --set optim.max_steps=1500 \
  --set student.distill_weight=100 --set student.huber_delta=0.1 \
  --set student.init_from="$R/student_ca/student.safetensors" --set student.teacher=sml \
  --set student.teacher_path="$M/teacher_segmenter_closed_set.safetensors" \
  --set student.teacher_stats_path="$M/teacher_segmenter_closed_set.stats.json" \
  --export "$M/student_scheme1.safetensors" --export-dtype int8

# 6. the shipped teacher: outlier exposure with synthetic negatives (csl_ros.training.negatives), a
#    fine-tuning of step 2 with patches of other in-distribution frames pasted on the road and entropy
#    maximisation on their pixels (Chan et al. 2021). No OOD data and none of the test obstacles; see
#    models/teacher_segmenter.md. Against road paint: negatives cast a contact shadow, paint-coloured ones
#    are redrawn, paint pixels weigh 5x in the cross-entropy, 300 extra frames carry rare paint.
#    Then its statistics / calibrations as in step 3. OE holds what every outlier-exposure run shares,
#    FRAMES_256 the scales of the runs on 256x512 renders.
OE=(--set frames=1000 --set batch_size=8 --set warmup_steps=50 --set negatives_max=3 --set negative_weight=1.0
  --set negative_shadow=true --set negative_avoid_road_paint=true --set negative_exclude_source_road=true
  --set rare_paint_frames=300 --set road_paint_weight=5 --set checkpoint_every=200 --set val_frames=100)
FRAMES_256=(--set render_size=256x512 --set crop_size=128x256 --set scale_range=0.5,1.25)
$CSL train segmenter --out "$R/segmenter_oe" "${OE[@]}" "${FRAMES_256[@]}" --set steps=1200 --set lr=3e-4 \
  --set num_threads=2 --set init_from="$M/teacher_segmenter_closed_set.safetensors"
# 6'. a second outlier-exposure run from step 6 (800 steps): half of the negatives are plain colour fields
#     of any saturation down to grey (negative_colour_saturation 0..1; csl_ros.training.negatives), so
#     asphalt-grey debris is not road to the teacher. Chosen on the synthroad tuning drives (docs/results.md).
OE+=(--set negative_colour_fraction=0.5 --set negative_colour_saturation=0,1)
$CSL train segmenter --out "$R/segmenter_oe2" "${OE[@]}" "${FRAMES_256[@]}" --set steps=800 --set lr=2e-4 \
  --set num_threads=1 --set init_from="$R/segmenter_oe/segmenter.safetensors" \
  --export "$M/teacher_segmenter.safetensors"
# 6''. a third outlier-exposure run from step 6' (800 steps, same recipe) with flat negatives: width/height
#     drawn from 0.5..6 instead of 0.5..2 (planks and lumps of debris lying on the road). Chosen together
#     with the student's step 4c on the tuning drives (step 6b). It starts from the float16 export of step 6'.
OE+=(--set negative_aspect=0.5,6)
$CSL train segmenter --out "$R/segmenter_oe3" "${OE[@]}" "${FRAMES_256[@]}" --set steps=800 --set lr=2e-4 \
  --set num_threads=1 --set init_from="$M/teacher_segmenter.safetensors" --export "$M/teacher_segmenter.safetensors"
fit_stats "$M/teacher_segmenter.safetensors"

# 6'''. a fourth outlier-exposure run from step 6'' (1200 steps, same recipe) at the second pass's scale:
#     frames rendered at 512x1024 and cropped 128x256 at scale 0.25..1 (0.5..2 x the 256x512 frames of the
#     earlier runs), so the test_scale 2 pass (512x1024) is inside the teacher's training scales. Chosen with
#     the student's step 4d in step 6c. (The shipped file is the trainer's output; --export writes the same.)
FRAMES_512=(--set render_size=512x1024 --set crop_size=128x256 --set scale_range=0.25,1.0)
$CSL train segmenter --out "$R/segmenter_oe4" "${OE[@]}" "${FRAMES_512[@]}" --set steps=1200 --set lr=2e-4 \
  --set num_threads=2 --set init_from="$M/teacher_segmenter.safetensors" --export "$M/teacher_segmenter.safetensors"
fit_stats "$M/teacher_segmenter.safetensors"

# 6b. detector settings tuned on the synthroad tuning drives (seeds from 40,000,000; never the held-out
#     drives of docs/results.md), written into the class-agnostic student's metadata: the rule of
#     `bench/driving.py --tune` with each teacher (their fused scores sit on different scales). Output
#     range 35 m (3.5 s at 10 m/s, --max-distances). The rule's recall floor was the default before this
#     retuning (MSP at 0.25, 100 px, 2 m height limit, no range: 52.3 % at 0.867 false alarms/frame with
#     this teacher); it chose MSP 0.45 (55.9 % at 0.447) and max logit 0.1 (53.4 % at 0.215), both 60 px,
#     no height limit, 1 of 1. Max logit keeps the recall at half the false alarms: it became the default
#     teacher (the schema's, csl_ros/config.py) and config/driving.yaml took its size, range and tracking.
python bench/driving.py --tune --set teacher=msp --thresholds 0.35,0.4,0.45,0.5,0.55 --max-distances 35 \
  --cache "$R/driving_cache" --json "$R/tune_msp.json"
python bench/driving.py --tune --set teacher=maxlogit --thresholds 0.03,0.05,0.07,0.1,0.15,0.2 \
  --max-distances 35 --cache "$R/driving_cache" --json "$R/tune_maxlogit.json"
python -m csl_ros.model_settings "$M/student_ca.safetensors" score_threshold=0.1 \
  'score_threshold_by_teacher={"msp": 0.45, "maxlogit": 0.1}'
# Session 20: the teacher's step 6'' and the student's step 4c (flat and grey negatives) replaced the
# previous weights after this comparison on the same 20 tuning drives, max logit, 35 m range, 60 px,
# 1 of 1, score_threshold 0.1 (the rule's budget: <= 0.15 false alarms/frame, tracked recall within 30 m):
#   previous teacher + previous student         53.2 % at 0.193 (best within the budget: 45.6 % at 0.133)
#   step 6'' teacher + previous student          51.0 % at 0.138
#   previous teacher + step 4c student           58.6 % at 0.198 (best within the budget: 52.2 % at 0.148)
#   step 6'' teacher + step 4c student           55.4 % at 0.133 (the rule's choice; shipped)
# and the rule then kept max logit 0.1 / 60 px / 1 of 1 and chose MSP 0.6 (53.5 % at 0.225: no MSP setting
# reaches the budget). The comparison ran each combination with --set teacher_path / teacher_stats_path /
# student_path pointing at the candidate files; with the shipped files in place the two commands above
# reproduce the last row and the MSP choice:
#   python bench/driving.py --tune --set teacher=maxlogit --thresholds 0.05,0.07,0.1,0.12 --max-heights 0 \
#     --max-distances 35 --cache "$R/driving_cache" --json "$R/tune_maxlogit.json"
#   python bench/driving.py --tune --set teacher=msp --thresholds 0.3,0.35,0.4,0.45,0.5,0.55,0.6 \
#     --max-heights 0 --max-distances 35 --cache "$R/driving_cache" --json "$R/tune_msp.json"
python -m csl_ros.model_settings "$M/student_ca.safetensors" input_height=256 input_width=512 test_scale=2 \
  score_threshold=0.1 'score_threshold_by_teacher={"msp": 0.6, "maxlogit": 0.1}' \
  'data=synthroad obstacles=none seeds 0..999 at 256x512; fine-tuned with synthetic negatives pasted on the road as regions of their own (the last run with flat and grey ones)' \
  'train_steps=4000 + 1500 + 1500 + 1000 (class-agnostic training, then three fine-tuning runs with negatives)'
# 6c. Session 21: the step 4d student and the step 6''' teacher against the pair of steps 4c / 6'' on the same
# 20 tuning drives (max logit, 35 m range, synthroad generator version 1, i.e. before the debris-polygon
# spots became decals), tracked recall within 30 m and false alarms/frame, 1 of 1:
#                      4c + 6'' (before)     4d + 6''              4d + 6''' (shipped)
#   thr 0.12 / 60 px   49.3 % at 0.098      50.7 % at 0.082      58.3 % at 0.140 (the rule's choice)
#   thr 0.1 / 100 px   52.5 % at 0.098      53.1 % at 0.093      57.7 % at 0.115
#   thr 0.1 / 60 px    55.4 % at 0.133      56.8 % at 0.142      61.4 % at 0.152
#   thr 0.07 / 100 px  58.6 % at 0.208      61.1 % at 0.197      62.4 % at 0.193
# (6''' with the 4c student: 55.3 % at 0.137 at 0.1 / 100 px, 58.7 % at 0.172 at 0.1 / 60 px.)
# The same drives with 4c / 6'' and the two scales combined otherwise (scale_fusion, same grid): mean: best
# below 0.25 false alarms/frame 51.6 % at 0.227 (0.1 / 100 px, 2 of 2); max: none above 43 % below 0.3
# false alarms/frame: what one scale alone sees is mostly noise, the geometric mean (the default) stays.
# The rule chose max logit 0.12 / 60 px / 1 of 1 (the schema default score_threshold followed; MSP's 0.6
# was not retuned for these weights). With the shipped files in place this reproduces the last column:
#   python bench/driving.py --tune --thresholds 0.05,0.07,0.1,0.12,0.15 --max-heights 0 --max-distances 35 \
#     --cache "$R/driving_cache" --json "$R/tune_maxlogit.json"
python -m csl_ros.model_settings "$M/student_ca.safetensors" input_height=256 input_width=512 test_scale=2 \
  score_threshold=0.12 'score_threshold_by_teacher={"msp": 0.6, "maxlogit": 0.12}' \
  'data=synthroad obstacles=none seeds 0..999 at 256x512; fine-tuned with synthetic negatives pasted on the road as regions of their own (the last two runs with flat and grey ones)' \
  'train_steps=4000 + 1500 + 1500 + 1000 + 1200 (class-agnostic training, then four fine-tuning runs with negatives)'
# then min_split_fraction (the schema default, csl_ros/config.py) with these settings on the same drives:
# 0.25 gave 1.29 instances per detected obstacle (recall 53.4 %, 0.215 false alarms/frame, per frame),
# 0.4 gave 1.16 (53.2 %, 0.193); 0.6 and 1 (no cut at all) 1.13 (53.2 %, 0.177). 0.4 keeps the cut of
# two touching obstacles of similar size.
python bench/driving.py --split-fractions 0.25,0.4,0.6,1.0 --cache "$R/driving_cache" --json "$R/split.json"

# 6d. Session 23: the same pair retuned on the same 20 tuning drives after synthroad generator version 2
# (debris-polygon spots became decals), max logit, 35 m range, no height limit, tracked recall within
# 30 m and false alarms/frame, 1 of 1 (k-of-n rows all lower at the same false alarms):
#   thr 0.15 / 60 px  53.9 % at 0.102     thr 0.12 / 60 px  59.2 % at 0.132 (the previous default)
#   thr 0.1 / 60 px   62.5 % at 0.145 (the rule's choice)
#   thr 0.12 / 30 px  62.0 % at 0.168     thr 0.12 / 20 px  62.8 % at 0.185
#   thr 0.1 / 30 px   65.1 % at 0.207     thr 0.08 / 60 px  65.4 % at 0.210
# (smaller instances buy little: obstacles of 10-50 visible pixels stay missed, their scores are low).
python bench/driving.py --tune --thresholds 0.08,0.1,0.12,0.15 --min-areas 20,30,60 --max-heights 0 \
  --max-distances 35 --cache "$R/driving_cache2" --json "$R/tune_maxlogit2.json"
python -m csl_ros.model_settings "$M/student_ca.safetensors" score_threshold=0.1 \
  'score_threshold_by_teacher={"msp": 0.6, "maxlogit": 0.1}'

# MSP's 0.6, checked for the same pair on the same drives (the rule's floor is now the recall of the
# configuration being tuned, MSP at its metadata threshold): the rule keeps 0.6 (56.2 % at 0.142; 0.55:
# 59.2 % at 0.203, 0.5: 60.6 % at 0.252, 0.7: 46.9 % at 0.082), so its entry stays.
python bench/driving.py --tune --set teacher=msp --thresholds 0.3,0.4,0.5,0.55,0.6,0.7 --min-areas 60 \
  --max-heights 0 --max-distances 35 --cache "$R/driving_cache2" --json "$R/tune_msp2.json"

# 6e. Session 24: the step 4e student (int8 export) with the step 6''' teacher, same 20 tuning drives, max
# logit, 60 px, 35 m, no height limit, 1 of 1 (step 4d's student in brackets, from 6d):
#   thr 0.15  55.9 % at 0.088 (53.9 % at 0.102)    thr 0.12  61.2 % at 0.112 (59.2 % at 0.132)
#   thr 0.1   64.0 % at 0.143 (62.5 % at 0.145; the rule's choice again)
#   thr 0.08  65.1 % at 0.195 (65.4 % at 0.210)
# MSP with the same pair: the rule keeps 0.6 (57.8 % at 0.142; 0.55: 60.9 % at 0.172, 0.5: 62.5 % at 0.217).
python bench/driving.py --tune --thresholds 0.08,0.1,0.12,0.15 --min-areas 60 --max-heights 0 \
  --max-distances 35 --cache "$R/driving_cache3" --json "$R/tune_maxlogit3.json"
python bench/driving.py --tune --set teacher=msp --thresholds 0.5,0.55,0.6,0.7 --min-areas 60 \
  --max-heights 0 --max-distances 35 --cache "$R/driving_cache3" --json "$R/tune_msp3.json"
python -m csl_ros.model_settings "$M/student_ca.safetensors" input_height=256 input_width=512 test_scale=2 \
  score_threshold=0.1 'score_threshold_by_teacher={"msp": 0.6, "maxlogit": 0.1}'

# 6f. Session 25: what did not ship, then the tracker's second association. Same 20 tuning drives, max logit,
# 60 px, 35 m, no height limit, tracked recall within 30 m and false alarms/frame, 1 of 1 (the shipped pair
# of steps 4e / 6''' in brackets: reproduced here, 0.1 -> 64.0 % at 0.143):
#   a sixth student fine-tuning (step 4e's recipe from its int8 export, run.seed=5):
#     thr 0.1  63.1 % at 0.135   thr 0.08  66.4 % at 0.183   thr 0.12  59.2 % at 0.117   (the same curve)
#   a fifth outlier-exposure run of the teacher (step 6''''s recipe from it, seed=5) with the shipped student:
#     thr 0.1  65.7 % at 0.180   thr 0.12  62.1 % at 0.133   thr 0.15  57.8 % at 0.098   (the same curve)
#   then, from that fifth run, a sixth with a third of the negatives in the crop's own road colour
#   (negative_road_colour_fraction=0.3, seed=6) and the shipped student: thr 0.1 61.2 % at 0.182; with a student
#   fine-tuned the same way (step 4e's recipe, negative_road_colour_fraction=0.3, run.seed=7): 62.1 % at 0.182.
#   Obstacles of little contrast to the road around them (python bench/driving_diagnosis.py --seeds ...): 28.7 %
#   found with that pair against 25.4 % with the sixth student and the shipped teacher, at more false alarms
#   on the road (76 against 53 per-frame false alarms mostly on road pixels).
#   Hysteresis thresholding (score_hysteresis, with the sixth student): no gain at equal false alarms
#   (thr 0.15 / 0.5: 60.1 % at 0.135 against thr 0.1 single: 63.1 % at 0.135).
#   The tracker's second association (track_continue_ratio, ByteTrack) with the shipped pair:
#     thr 0.1 / 0.7  65.1 % at 0.147 (the rule's choice: config/driving.yaml)   thr 0.1 / 0.5  65.7 % at 0.157
#     thr 0.12 / 0.5  63.1 % at 0.123   thr 0.08 / 0.7  65.4 % at 0.200
#   and a wider grid (min_instance_area 30 / 45 / 60, ratios 0.3 / 0.5 / 0.7, thr 0.1 / 0.12 / 0.15) keeps it; the
#   nearest rows: thr 0.12 / 45 px / 0.5  64.0 % at 0.132, thr 0.12 / 30 px / 0.7  64.5 % at 0.155,
#   thr 0.1 / 45 px / 0.7  65.6 % at 0.177 (--min-areas 30,45,60 --continue-ratios 0.7,0.5,0.3).
# The trainings (run dirs as above; none of their files ships):
#   $CSL train student --scheme ca --out "$R/student_ca_neg6" ...(step 4e's options)... --set run.seed=5
#   $CSL train segmenter --out "$R/segmenter_oe5" ...(step 6''''s options)... --set seed=5 \
#     --set init_from="$M/teacher_segmenter.safetensors"
#   $CSL train segmenter --out "$R/segmenter_oe6" ...(the same)... --set seed=6 --set negative_road_colour_fraction=0.3 \
#     --set init_from="$R/segmenter_oe5/segmenter.safetensors"
#   $CSL train student --scheme ca --out "$R/student_ca_neg7" ...(step 4e's options)... --set run.seed=7 \
#     --set data.negative_road_colour_fraction=0.3
# and each candidate tuned with --set student_path / teacher_path / teacher_stats_path as in step 6c. With the
# shipped files in place this reproduces the last rows:
python bench/driving.py --tune --thresholds 0.08,0.1,0.12,0.15 --continue-ratios 1,0.7,0.5 --min-areas 60 \
  --max-heights 0 --max-distances 35 --cache "$R/driving_cache3" --json "$R/tune_continue.json"

# 6g. Session 26: the same shipped pair at other input sizes and scale combinations, nothing shipped. Same 20
# tuning drives, max logit, 60 px, 35 m, no height limit, tracked recall within 30 m and false alarms/frame,
# 1 of 1 ("cont." = with the continuation 0.7 of config/driving.yaml); the shipped default for reference:
# thr 0.1 64.0 % at 0.143 (cont. 65.1 % at 0.147), thr 0.08 65.1 % at 0.195 (cont. 65.4 % at 0.200).
#   one pass at 512x1024 (input 512x1024, test_scale 1): thr 0.1 72.1 % at 1.137, thr 0.15 67.1 % at 0.670,
#     thr 0.2 / 120 px 46.9 % at 0.188 (what the coarse pass removes is mostly false alarms)
#   input 384x768 with test_scale 1.333 (the second pass still 512x1024): thr 0.15 63.2 % at 0.193,
#     thr 0.12 68.7 % at 0.302, thr 0.1 72.0 % at 0.420
#   test_scale 3 (a 768x1536 second pass; the first 10 tuning drives): thr 0.1 53.1 % at 0.180 (cont. 54.2 %
#     at 0.187), thr 0.12 50.5 % at 0.140; the shipped default on the same 10 drives: thr 0.12 53.8 % at 0.190
#     (cont. 54.6 % at 0.197), thr 0.1 58.2 % at 0.230
#   fusion_region_exponent 0.5 (m^0.5 D): thr 0.2 64.2 % at 0.123 (cont. 65.3 % at 0.135), thr 0.15 66.8 % at 0.240
#   the teacher alone (scheme teacher_only, both scales): thr 0.5 49.7 % at 0.128, thr 0.4 65.6 % at 0.393,
#     thr 0.1 42.5 % at 3.345 (low thresholds merge obstacles into road-sized blobs)
# Every row lies on the shipped curve or below it: the obstacles the default misses score low at every input
# size (python bench/driving_diagnosis.py: most missed near obstacles have no pixel at the threshold).
python bench/driving.py --tune --thresholds 0.1,0.15,0.2 --min-areas 60,120 --max-heights 0 --max-distances 35 \
  --set input_height=512 --set input_width=1024 --set test_scale=1 --cache "$R/driving_cache3" --json "$R/tune_512.json"
python bench/driving.py --tune --thresholds 0.1,0.12,0.15 --continue-ratios 1,0.7 --min-areas 60 --max-heights 0 \
  --max-distances 35 --set input_height=384 --set input_width=768 --set test_scale=1.3333333 \
  --cache "$R/driving_cache3" --json "$R/tune_384.json"
python bench/driving.py --tune --tune-drives 10 --thresholds 0.1,0.12 --continue-ratios 1,0.7 --min-areas 60 \
  --max-heights 0 --max-distances 35 --set test_scale=3 --cache "$R/driving_cache3" --json "$R/tune_x3.json"
python bench/driving.py --tune --tune-drives 10 --thresholds 0.1,0.12 --continue-ratios 1,0.7 --min-areas 60 \
  --max-heights 0 --max-distances 35 --cache "$R/driving_cache3" --json "$R/tune_x2_10.json"
python bench/driving.py --tune --thresholds 0.15,0.2 --continue-ratios 1,0.7 --min-areas 60 --max-heights 0 \
  --max-distances 35 --set fusion_region_exponent=0.5 --cache "$R/driving_cache3" --json "$R/tune_m05.json"
python bench/driving.py --tune --thresholds 0.1,0.4,0.5 --min-areas 60 --max-heights 0 --max-distances 35 \
  --set scheme=teacher_only --cache "$R/driving_cache3" --json "$R/tune_teacher_only.json"

# 6h. Session 27: the output range (max_obstacle_distance_m) acts on the pieces (anomalous area x student region)
# before instances form (csl_ros.pipeline.instances.extract_instances, min_bottom_row), so a near obstacle whose
# anomalous area runs into the far horizon band is no longer the foot of one oversized false instance (a miss and
# a false alarm at once). No model changed. Same 20 tuning drives, max logit, 60 px, 35 m, no height limit, 1 of 1,
# tracked recall within 30 m and false alarms/frame (before, from 6f/6g, in brackets):
#   thr 0.1, cont. 0.7   65.3 % at 0.142 (65.1 % at 0.147; the rule's choice again: config/driving.yaml unchanged)
#   thr 0.08, cont. 0.7  66.5 % at 0.180 (65.4 % at 0.200)     thr 0.12, cont. 0.7  61.7 % at 0.122 (61.7 % at 0.120)
#   thr 0.1, per frame   64.2 % at 0.138 (64.0 % at 0.143)
python bench/driving.py --tune --thresholds 0.08,0.1,0.12,0.15 --continue-ratios 1,0.7 --min-areas 60 --max-heights 0 \
  --max-distances 35 --cache "$R/driving_cache3" --json "$R/tune_piece_range.json"

# 6i. Session 28: test-time flip of the teacher (DetectorConfig.teacher_flip: its score map is the mean of the image's and
# the mirrored image's pass, at each scale; the student's regions unchanged). No model changed. Same 20 tuning drives,
# max logit, 60 px, 35 m, no height limit, 1 of 1; tracked recall within 30 m and false alarms/frame, without -> with:
#   thr 0.08, cont. 0.7  66.5 % at 0.180 -> 68.1 % at 0.193     thr 0.1, cont. 0.7   65.3 % at 0.142 -> 65.6 % at 0.140
#   thr 0.12, cont. 0.7  61.7 % at 0.122 -> 62.1 % at 0.098     thr 0.15, cont. 0.7  57.3 % at 0.093 -> 57.8 % at 0.093
#   thr 0.1, per frame   64.2 % at 0.138 -> 64.5 % at 0.128
# The rule (highest tracked recall at <= 0.15) picks thr 0.1, cont. 0.7 with the flip: config/driving.yaml turns it on
# (threshold unchanged); the driving steps above ran without it: add --set teacher_flip=false to reproduce their
# figures. The geometric mean of the two passes instead of the mean (a throwaway run, not an option):
# 64.3 % at 0.132 at thr 0.1, 61.4 % at 0.088 at 0.12, 66.7 % at 0.180 at 0.08: below the mean's curve. The cost on
# this CPU is 1.33x the frame time (docs/performance.md, bench/pipeline.py).
python bench/driving.py --tune --thresholds 0.08,0.1,0.12,0.15 --continue-ratios 1,0.7 --min-areas 60 --max-heights 0 \
  --max-distances 35 --set teacher_flip=false --cache "$R/driving_cache3" --json "$R/tune_no_flip.json"
python bench/driving.py --tune --thresholds 0.08,0.1,0.12,0.15 --continue-ratios 1,0.7 --min-areas 60 --max-heights 0 \
  --max-distances 35 --set teacher_flip=true --cache "$R/driving_cache3" --json "$R/tune_teacher_flip.json"

# 6i'. The SML and energy teachers with the driving default (teacher_flip on; their fused scores sit on other scales,
# hence their own threshold grids; continuation 0.7). Never tuned for driving before; both far below max logit:
#   sml     thr 0.2  51.6 % at 0.247   thr 0.25 43.1 % at 0.185   thr 0.3  29.8 % at 0.100   (thr 0.1: 62.3 % at 0.623)
#   energy  thr 0.01 46.0 % at 0.578   thr 0.02 15.0 % at 0.175   thr 0.03  8.3 % at 0.060   (thr 0.005: 66.5 % at 1.542)
# Their false alarms were not broken down (docs/results_notes.md point 6: SML's class statistics are poor for the
# classes the segmenter barely learned). config/driving.yaml keeps max logit.
python bench/driving.py --tune --set teacher=sml --thresholds 0.05,0.08,0.1,0.12,0.15,0.2,0.25,0.3 --continue-ratios 1,0.7 \
  --min-areas 60 --max-heights 0 --max-distances 35 --cache "$R/driving_cache3" --json "$R/tune_sml.json"
python bench/driving.py --tune --set teacher=energy --thresholds 0.001,0.002,0.005,0.01,0.02,0.03 --continue-ratios 0.7 \
  --min-areas 60 --max-heights 0 --max-distances 35 --cache "$R/driving_cache3" --json "$R/tune_energy.json"

# 6j. Session 29: is there anything beyond the threshold that tells the false alarms from the obstacles? No model
# changed. bench/driving_candidates.py: candidate instances at threshold 0.05 on the same 20 tuning drives (shipped
# default otherwise, teacher_flip on), 762 candidates (515 true), per frame (untracked), recall within 30 m and false
# alarms/frame. The threshold rule on the candidates' highest fused score: 0.1 66.5 % at 0.255, 0.12 64.2 % at 0.197
# (its best within 0.2), 0.15 60.3 % at 0.145; a logistic regression on nine instance features (scores, size,
# distance, metric height/width, aspect, fill, the teacher's road share; four folds of whole drives): p 0.1 67.9 %
# at 0.395, 0.7 53.7 % at 0.220, 0.8 49.4 % at 0.163 (its best within 0.2): below the threshold rule everywhere.
# (A depth-3 decision tree and gradient boosting, throwaway runs: below it too.) Every candidate's features hold
# nothing the fused score does not; python bench/driving_diagnosis.py --seeds 40000000,...,40000019 gives the share
# of near obstacle-frames whose best pixel reaches each score (the ceiling of every instance rule on these maps).
python bench/driving_candidates.py --threshold 0.05 --cache "$R/driving_cache3" --json "$R/candidates.json"

# 6j'. A fifth outlier-exposure run of the teacher aimed at the small misses: step 6''''s recipe from the shipped
# teacher with smaller and more negatives (height 2-15 % of the crop instead of 3-35 %, up to 6 per crop instead of 3),
# seed=7, 1200 steps (46.3 % mIoU on the 512x1024 validation frames; the shipped teacher 47.8 %), with the shipped
# student, same 20 tuning drives, max logit, teacher_flip, 60 px, 35 m, continuation 0.7, tracked recall within 30 m
# and false alarms/frame (the shipped teacher in brackets, from 6i):
#   thr 0.08  67.4 % at 0.330 (68.1 % at 0.193)    thr 0.1   65.7 % at 0.237 (65.6 % at 0.140)
#   thr 0.12  62.8 % at 0.180 (62.1 % at 0.098)    thr 0.15  55.1 % at 0.128 (57.8 % at 0.093)
# The same obstacles at more false alarms: nothing shipped. The mean of its fused map and the shipped teacher's
# (a late ensemble, throwaway run on the cached maps, not an option): thr 0.1 66.5 % at 0.172, thr 0.12 63.2 % at
# 0.122, thr 0.08 68.5 % at 0.242: on the shipped curve, not above it.
#   $CSL train segmenter --out "$R/segmenter_small" "${OE[@]}" "${FRAMES_512[@]}" --set steps=1200 --set lr=2e-4 \
#     --set negative_size=0.02,0.15 --set negatives_max=6 --set seed=7 --set num_threads=1 \
#     --set init_from="$M/teacher_segmenter.safetensors"
#   fit_stats "$R/segmenter_small/segmenter.safetensors"
#   python bench/driving.py --tune --thresholds 0.08,0.1,0.12,0.15 --continue-ratios 1,0.7 --min-areas 60 \
#     --max-heights 0 --max-distances 35 --set teacher_path="$R/segmenter_small/segmenter.safetensors" \
#     --set teacher_stats_path="$R/segmenter_small/segmenter.stats.json" --cache "$R/driving_cache3"

# 6k. Session 32: a stronger closed-set base for the teacher. The closed-set stage (step 2) saw 256x512 frames only; a
# continuation of it on the 512x1024 frames (crops 128x256 at scale 0.25..1, so both detector passes are inside its
# training scales), 4500 steps, lr 5e-4, seed=11: 57.6 % mIoU on the 512x1024 validation frames (metrics.json). Then one
# outlier-exposure run with step 6''''s recipe from it (1200 steps): 48.4 % (the shipped teacher 47.8 %). With the
# shipped student, same 20 tuning drives, max logit, teacher_flip, 60 px, 35 m, continuation 0.7, tracked recall within
# 30 m and false alarms/frame. Its calibration (the logistic centred on the 99th percentile of in-distribution max
# logit) sits about 2 logits higher than the shipped teacher's, so its fused scores sit lower and need their own grid:
#   thr 0.0075  67.8 % at 0.495    thr 0.01  62.8 % at 0.303    thr 0.0125  55.5 % at 0.182    thr 0.015  43.5 % at 0.138
# against the shipped teacher's 68.1 % at 0.193 (thr 0.08) and 65.6 % at 0.140 (thr 0.1) from 6i: below it everywhere.
#   $CSL train segmenter --out "$R/closed2" --set frames=1000 "${FRAMES_512[@]}" --set steps=4500 --set batch_size=8 \
#     --set lr=5e-4 --set warmup_steps=50 --set num_threads=1 --set checkpoint_every=200 --set val_frames=100 \
#     --set seed=11 --set init_from="$M/teacher_segmenter_closed_set.safetensors"
#   $CSL train segmenter --out "$R/closed2_oe" "${OE[@]}" "${FRAMES_512[@]}" --set steps=1200 --set lr=2e-4 \
#     --set num_threads=1 --set init_from="$R/closed2/segmenter.safetensors"
#   fit_stats "$R/closed2_oe/segmenter.safetensors"
#   python bench/driving.py --tune --thresholds 0.0075,0.01,0.0125,0.015,0.02 --continue-ratios 1,0.7 --min-areas 60 \
#     --max-heights 0 --max-distances 35 --set teacher_path="$R/closed2_oe/segmenter.safetensors" \
#     --set teacher_stats_path="$R/closed2_oe/segmenter.stats.json" --cache "$R/driving_cache4"
# A second outlier-exposure run from that one (the same recipe, 1200 steps; 49.1 % mIoU) to match the shipped teacher's
# longer outlier exposure better, its own grid again (its calibration centre 0.31, the shipped teacher's -0.53):
#   thr 0.03  68.5 % at 0.360    thr 0.04  66.5 % at 0.208    thr 0.05  60.6 % at 0.142    thr 0.06  56.4 % at 0.098
# still below the shipped curve (68.1 % at 0.193, 65.6 % at 0.140). More outlier exposure moves it towards that curve,
# not above it: a sharper closed-set base does not tell the obstacles from the road better; nothing shipped.
#   $CSL train segmenter --out "$R/closed2_oe2" "${OE[@]}" "${FRAMES_512[@]}" --set steps=1200 --set lr=2e-4 \
#     --set num_threads=1 --set init_from="$R/closed2_oe/segmenter.safetensors"
#   fit_stats "$R/closed2_oe2/segmenter.safetensors"
#   python bench/driving.py --tune --thresholds 0.03,0.04,0.05,0.06,0.08 --continue-ratios 1,0.7 --min-areas 60 \
#     --max-heights 0 --max-distances 35 --set teacher_path="$R/closed2_oe2/segmenter.safetensors" \
#     --set teacher_stats_path="$R/closed2_oe2/segmenter.stats.json" --cache "$R/driving_cache5"

# 6l. Session 33: a teacher of more capacity, the fpn_resnet18 preset (ResNet-18 trunk + FPN decoder, 11.4 M parameters
# against LR-ASPP MobileNetV3's 3.2 M; csl_ros.teachers.segmenter), from scratch. Closed-set stage directly on the
# 512x1024 frames (crops 128x256 at scale 0.25..1, both detector passes inside its training scales), 3500 steps, lr 1e-3,
# seed=21 (40 min on this CPU): 55.0 % mIoU on the 512x1024 validation frames. Then one outlier-exposure run with every
# addition of steps 6 to 6''' at once (2400 steps, lr 3e-4, seed=22, 38 min): 55.6 % (the shipped teacher 47.8 %).
# fit-stats as in step 3 (its max-logit calibration centre -1.06, the shipped teacher's -0.53). With the shipped student,
# same 20 tuning drives, max logit, teacher_flip, 60 px, 35 m, continuation 0.7, tracked recall within 30 m and false
# alarms/frame (the shipped teacher from 6i in brackets):
#   thr 0.1   69.6 % at 0.217    thr 0.12  69.3 % at 0.192 (68.1 % at 0.193, thr 0.08)    thr 0.13  68.5 % at 0.178
#   thr 0.15  67.3 % at 0.160    thr 0.17  66.7 % at 0.137 (65.6 % at 0.140, thr 0.1)     thr 0.2   64.0 % at 0.120
# The first teacher above the shipped curve, by about one point (7 of 642 obstacle-frames within 30 m; the 95 % interval
# of 30 drives spans 18 points), and with fewer fragments (1.06-1.08 instances per detected obstacle against 1.3): far
# from the 80 % goal, and it costs a larger teacher at every frame. Not shipped.
#   $CSL train segmenter --out "$R/fpn_closed" --set preset=fpn_resnet18 --set frames=1000 "${FRAMES_512[@]}" \
#     --set steps=3500 --set batch_size=8 --set lr=1e-3 --set warmup_steps=50 --set num_threads=2 \
#     --set checkpoint_every=250 --set val_frames=100 --set seed=21
#   $CSL train segmenter --out "$R/fpn_oe" --set preset=fpn_resnet18 "${OE[@]}" "${FRAMES_512[@]}" --set steps=2400 \
#     --set lr=3e-4 --set num_threads=2 --set seed=22 --set init_from="$R/fpn_closed/segmenter.safetensors"
#   fit_stats "$R/fpn_oe/segmenter.safetensors"
#   python bench/driving.py --tune --thresholds 0.05,0.07,0.08,0.1,0.12,0.13,0.15,0.17,0.2 --continue-ratios 0.7 \
#     --min-areas 60 --max-heights 0 --max-distances 35 --set teacher_path="$R/fpn_oe/segmenter.safetensors" \
#     --set teacher_stats_path="$R/fpn_oe/segmenter.stats.json" --cache "$R/driving_cache_fpn"

# A second outlier-exposure run from it (the same recipe, 1200 steps, lr 2e-4, seed=23; 56.5 % mIoU; calibration centre
# -1.23), tuned the same way (thresholds 0.08..0.2): thr 0.17 67.8 % at 0.192, thr 0.2 65.7 % at 0.162, thr 0.15 68.2 % at 0.218:
# more false alarms at the same recall: below the first run's curve.
#   $CSL train segmenter --out "$R/fpn_oe2" --set preset=fpn_resnet18 "${OE[@]}" "${FRAMES_512[@]}" --set steps=1200 \
#     --set lr=2e-4 --set num_threads=2 --set seed=23 --set init_from="$R/fpn_oe/segmenter.safetensors"

# 7. manifest
python - "$M" <<'EOF'
import sys
from pathlib import Path
from csl_ros.shipped import register_shipped
m = Path(sys.argv[1])
for name, file, kind in [("teacher_segmenter_closed_set", "teacher_segmenter_closed_set.safetensors", "segmenter"),
                         ("teacher_segmenter_closed_set_stats", "teacher_segmenter_closed_set.stats.json", "teacher_stats"),
                         ("teacher_segmenter", "teacher_segmenter.safetensors", "segmenter"),
                         ("teacher_segmenter_stats", "teacher_segmenter.stats.json", "teacher_stats"),
                         ("student_ca", "student_ca.safetensors", "student"),
                         ("student_scheme1", "student_scheme1.safetensors", "student")]:
    card = "teacher_segmenter.md" if name.startswith("teacher_") else Path(file).name.split(".")[0] + ".md"
    print(name, register_shipped(name, m / file, kind, m, card=card))
EOF
