"""train.precision=auto on CPU: bf16 only where the CPU has bf16 units and they measure faster;
the choice and its reason reach the start line, the manifest and the checkpoint."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from kiln.config import load_config
from kiln.data import SortedBatchSampler, make_loader, pad_id, prepare_data
from kiln.models import load_model_dir
from kiln.run.checkpoints import latest_checkpoint
from kiln.train import train
from kiln.train.evaluate import evaluate
from kiln.train.precision import (
    BF16_MIN_SPEEDUP,
    Precision,
    auto_cpu_precision,
    choose_cpu_precision,
    cpu_bf16_units,
    measure_bf16_matmul_speedup,
    native_bf16_units,
    resolve_precision,
)
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")

# First processors of real /proc/cpuinfo files (flags lines cut after the bf16-relevant part
# only where marked; everything else as the kernel prints it).
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
stepping\t: 8
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx \
fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon rep_good nopl \
xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 \
sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm \
3dnowprefetch invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 \
smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd \
sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd ida arat \
avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg \
tme avx512_vpopcntdq rdpid cldemote movdiri movdir64b md_clear serialize amx_bf16 avx512_fp16 \
amx_tile amx_int8 flush_l1d arch_capabilities
vmx flags\t: vnmi preemption_timer invvpid ept_x_only ept_ad ept_1gb
bugs\t\t: spectre_v1 spectre_v2 spec_store_bypass swapgs eibrs_pbrsb bhi
bogomips\t: 4800.00

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse
"""

# A 2-core Xeon VM whose hypervisor shows AVX512-BF16 but not AMX.
XEON_VM_AVX512_BF16 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx \
fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology \
nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe \
popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch \
cpuid_fault fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq \
rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec \
xgetbv1 xsaves avx_vnni avx512_bf16 arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq \
avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid cldemote movdiri movdir64b fsrm serialize \
tsxldtrk avx512_fp16 arch_capabilities
bogomips\t: 4200.00
"""

CASCADE_LAKE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx \
fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology \
nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 \
x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm \
3dnowprefetch invpcid_single pti fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid mpx \
avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl xsaveopt xsavec \
xgetbv1 xsaves ida arat pku ospke avx512_vnni
bugs\t\t: cpu_meltdown spectre_v1 spectre_v2 spec_store_bypass l1tf mds swapgs itlb_multihit
"""

EPYC_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7R13 Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx \
fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl \
nonstop_tsc cpuid extd_apicid aperfmperf tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid \
sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy \
cr8_legacy abm sse4a misalignsse 3dnowprefetch topoext invpcid_single ssbd ibrs ibpb stibp \
vmmcall fsgsbase bmi1 avx2 smep bmi2 invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt \
xsavec xgetbv1 clzero xsaveerptr rdpru wbnoinvd arat npt nrip_save vaes vpclmulqdq rdpid
"""

GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs \
paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd40
"""

GRAVITON2 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
"""


def join_continued(text: str) -> str:
    return text.replace("\\\n", "")


@pytest.mark.parametrize(("cpuinfo", "units"), [
    (SAPPHIRE_RAPIDS, ["AMX-BF16", "AVX512-BF16"]),
    (XEON_VM_AVX512_BF16, ["AVX512-BF16"]),
    (CASCADE_LAKE, []),
    (EPYC_ZEN3, []),
    (GRAVITON3, ["Arm BF16"]),
    (GRAVITON2, []),
    ("", []),
])
def test_bf16_units_are_read_from_the_first_processors_flags(cpuinfo: str,
                                                             units: list[str]) -> None:
    assert cpu_bf16_units(join_continued(cpuinfo)) == units


def test_bf16_units_are_read_from_a_cpuinfo_file(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(join_continued(SAPPHIRE_RAPIDS))
    assert native_bf16_units(tmp_path / "cpuinfo") == ["AMX-BF16", "AVX512-BF16"]


def test_without_proc_cpuinfo_torch_says_which_units_there_are(tmp_path: Path) -> None:
    units = native_bf16_units(tmp_path / "absent")  # as on macOS or Windows
    assert set(units) <= {"AMX-BF16", "AVX512-BF16", "bf16 (as oneDNN reports it)"}


def test_without_bf16_units_auto_is_fp32_and_does_not_measure() -> None:
    def never() -> float:
        raise AssertionError("a CPU without bf16 units needs no measurement")

    chosen = choose_cpu_precision(cpu_bf16_units(join_continued(CASCADE_LAKE)), never)
    assert chosen.name == "fp32"
    assert chosen.reason == ("auto: this CPU has no bf16 matrix instructions "
                             "(AMX-BF16, AVX512-BF16 or Arm BF16)")


def test_bf16_units_that_measure_faster_give_bf16_and_say_why() -> None:
    chosen = choose_cpu_precision(["AMX-BF16", "AVX512-BF16"], lambda: 3.46)
    assert chosen == Precision(
        "bf16", "auto: this CPU has AMX-BF16 and AVX512-BF16 and its bf16 matmul measured "
                "3.46x fp32 on one core")


def test_bf16_units_that_measure_slower_give_fp32_and_say_why() -> None:
    chosen = choose_cpu_precision(["AVX512-BF16"], lambda: 0.53)
    assert chosen.name == "fp32"
    assert chosen.reason.startswith("auto: this CPU has AVX512-BF16 but its bf16 matmul measured "
                                     f"0.53x fp32 on one core, below the {BF16_MIN_SPEEDUP}x")
    assert choose_cpu_precision(["AVX512-BF16"], lambda: BF16_MIN_SPEEDUP).name == "bf16"


def test_this_cpu_gets_a_measured_decision() -> None:
    speedup = measure_bf16_matmul_speedup(n=128, seconds=0.02)
    assert math.isfinite(speedup) and speedup > 0
    chosen = resolve_precision("auto", CPU)
    assert chosen is auto_cpu_precision()  # decided once per process
    assert chosen.reason.startswith("auto: ")
    if not native_bf16_units():
        assert chosen.name == "fp32"


def test_a_resumed_run_keeps_the_choice_it_started_with() -> None:
    started = {"name": "bf16", "reason": "auto: this CPU has AMX-BF16 and ...", "device": "cpu"}
    assert resolve_precision("auto", CPU, started=started) == Precision(
        "bf16", "auto: this CPU has AMX-BF16 and ...; kept on resume")
    on_gpu = {**started, "device": "cuda"}  # a GPU run resumed on a CPU decides afresh
    assert resolve_precision("auto", CPU, started=on_gpu) == auto_cpu_precision()


def test_explicit_bf16_on_cpu_warns_only_where_auto_would_not_choose_it() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("bf16", CPU) == Precision("bf16", "train.precision=bf16")
    warned = [str(w.message) for w in caught if "bf16 on CPU" in str(w.message)]
    if auto_cpu_precision().name == "bf16":
        assert not warned
    else:  # says what auto found here
        assert len(warned) == 1 and auto_cpu_precision().reason[6:] in warned[0]


def test_the_start_line_manifest_and_checkpoint_record_the_choice(
    small_dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.max_steps": 3, "train.checkpoint_every": 3})), progress=False)
    chosen = auto_cpu_precision()
    assert f"precision {chosen.name} ({chosen.reason})" in capsys.readouterr().err
    record = json.loads((tmp_path / "model" / "kiln.json").read_text())["training"]
    assert (record["precision"], record["precision_reason"]) == (chosen.name, chosen.reason)
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None
    saved = torch.load(checkpoint / "trainer_state.pt", weights_only=True)["precision"]
    assert saved == {"name": chosen.name, "reason": chosen.reason, "device": "cpu"}


def test_a_bf16_run_records_the_accuracy_of_the_fp32_model_it_ships(
    small_dataset: tuple[Path, Path], tmp_path: Path,
) -> None:
    cfg = load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.max_steps": 6, "train.precision": "bf16", "train.select": "last"}))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "train.precision=bf16 on CPU")  # where bf16 is slower
        train(cfg, progress=False)
    record = json.loads((tmp_path / "model" / "kiln.json").read_text())["training"]
    assert record["precision"] == "bf16"
    data = prepare_data(cfg, tmp_path)
    shipped = evaluate(load_model_dir(tmp_path / "model").model, make_loader(
        data.eval, SortedBatchSampler(data.eval.lengths, 32), cfg.data, pad_id(data.tokenizer),
        cfg.seed), len(data.label_names), CPU)  # fp32, as export and serve run it
    assert record["eval"]["accuracy"] == shipped.accuracy
    assert record["eval"]["loss"] == pytest.approx(shipped.loss, rel=1e-5)
