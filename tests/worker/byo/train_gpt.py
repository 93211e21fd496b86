"""A stand-in for a participant's train_gpt.py: no torch, seconds on a CPU, the community's log
lines on stdout and the artifact files the community's scripts write.

MODE: "ok" (default), "crash" (exit 1), "silent" (exit 0 without a final metric).
DUMP_ENV: a file to write this process's environment to, as JSON.
"""
import json
import os
import sys

seed = int(os.environ["SEED"])
print(f"run_id:{os.environ['RUN_ID']} seed:{seed} world_size:{os.environ.get('WORLD_SIZE')}")
print(f"max_wallclock_seconds:{os.environ.get('MAX_WALLCLOCK_SECONDS')}")
if os.environ.get("DUMP_ENV"):
    with open(os.environ["DUMP_ENV"], "w", encoding="utf-8") as dump:
        json.dump(dict(os.environ), dump)
mode = os.environ.get("MODE", "ok")
steps = 20
for step in range(1, steps + 1):
    print(f"step:{step}/{steps} train_loss:{3 - step / 100:.4f} train_time:{step * 10}ms step_avg:10.00ms")
if mode == "crash":
    print("Traceback (most recent call last):\nRuntimeError: the loss became nan", file=sys.stderr)
    sys.exit(1)
if mode == "silent":
    sys.exit(0)
print("val_tokens:62021632")
print(f"step:{steps}/{steps} val_loss:2.5000 val_bpb:1.4800 train_time:200ms step_avg:10.00ms")
model = bytes((seed * 7 + i) % 251 for i in range(5000))
with open("final_model.pt", "wb") as raw:
    raw.write(model * 4)
with open("final_model.int8.ptz", "wb") as artifact:
    artifact.write(model)
code = os.path.getsize(__file__)
print(f"Serialized model int8+zlib: {len(model)} bytes")
print(f"Total submission size int8+zlib: {len(model) + code} bytes")
bpb = 1.48 + seed / 1e6
print(f"final_int8_zlib_roundtrip val_loss:2.5123 val_bpb:{bpb:.4f} eval_time:300ms")
print(f"final_int8_zlib_roundtrip_exact val_loss:2.51234567 val_bpb:{bpb:.8f}")
