"""3D by propagation: the SAM 2.1 engine's propagation role on a tiny synthetic volume, and
``method=salip_propagate`` end to end on ct_abdomen and mri_brain (tiny random models), bad inputs included."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import MRI, SHARED, SMOKE, compose_config, yaml_config
from salip_bench.engines.builder import build_engine
from salip_bench.engines.roles import MissingRoleError, Propagator
from salip_bench.methods.salip_propagate import NOT_FOUND, OrganVolume, SalipPropagateMethod, key_score, sampled_slices
from salip_bench.types import Prediction
from test_clip_engines import hf_snapshot, hub_cache  # noqa: F401 - the fixture is used by name

CT_ABDOMEN = SHARED / "ct_abdomen"
needs_data = pytest.mark.skipif(not CT_ABDOMEN.is_dir() or not MRI.is_dir(), reason="shared dev data not present")


@pytest.fixture(scope="module")
def engine():
    return build_engine(yaml_config("model", "sam2_tiny"), "random")


@pytest.fixture(scope="module")
def volume():
    """5 slices of 48 x 64 with a disc that grows then shrinks, on noise; its masks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :64]
    masks = np.stack([(yy - 24) ** 2 + (xx - 30) ** 2 < r ** 2 for r in (4, 8, 10, 8, 4)])
    frames = rng.integers(0, 60, (5, 48, 64, 3), dtype=np.uint8)
    frames[masks] = 200
    return frames, masks


@pytest.mark.parametrize("key", [2, 0, 4])
def test_propagates_forward_and_backward_from_any_key_slice(engine, volume, key):
    frames, masks = volume
    engine.reset()
    result = engine.propagate(frames, {key: masks[key]})
    assert isinstance(engine, Propagator)
    assert result.masks.shape == masks.shape and result.masks.dtype == bool
    assert result.object_scores.shape == (5,) and np.isfinite(result.object_scores).all()
    assert result.frames_run == 4 and engine.counters()["propagation_frames"] == 4  # every slice but the key
    assert engine.counters()["encoder_passes"] == 5  # one encoder pass per slice
    np.testing.assert_array_equal(result.masks[key], masks[key])  # a mask input is its frame's output
    # the object scores decide: a slice is non-empty only where SAM 2 says the object is present
    assert not result.masks[result.object_scores <= 0].any()


def test_a_key_slice_encoded_for_its_everything_pass_is_not_encoded_again(engine, volume):
    frames, masks = volume
    engine.reset()
    engine.everything(frames[2], points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert engine.counters()["encoder_passes"] == 1
    engine.propagate(frames, {2: masks[2]})
    assert engine.counters()["encoder_passes"] == 5  # the key slice's features were reused


def test_two_keys_decode_each_slice_once(engine, volume):
    frames, masks = volume
    engine.reset()
    result = engine.propagate(frames, {1: masks[1], 3: masks[3]})
    # forward from the first key to the end, backward from it: slice 2 (between the keys) once, not twice
    assert result.frames_run == 3 and engine.counters()["encoder_passes"] == 5
    np.testing.assert_array_equal(result.masks[[1, 3]], masks[[1, 3]])


def test_sampled_slices_held_for_the_propagation_are_encoded_once(engine):
    """10 sampled slices of 12, more than the memo's 8: held in the reservation, none encoded again, and
    the propagation's own frames push none of them out."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (12, 32, 40, 3), dtype=np.uint8)
    mask = np.zeros((32, 40), bool)
    mask[8:20, 10:30] = True
    engine.reset()
    with engine.reserved(12, 10):
        for index in range(1, 11):
            engine.everything(frames[index], points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        assert engine.counters()["encoder_passes"] == 10
        engine.propagate(frames, {10: mask})
    assert engine.counters()["encoder_passes"] == 12  # + slices 0 and 11, never sampled
    assert len(engine.feature_memo) == 8  # back to its bound after the block
    with pytest.raises(MemoryError, match="features of 10 sampled slices, over max_state_gb=0.0001"):
        with engine.reserved(12, 10, max_state_gb=1e-4):
            pytest.fail("the block ran")


def test_medsam2_is_built_by_the_sam2_package_and_loads_its_release_from_the_hub_cache(
        hub_cache, tmp_path, monkeypatch, volume):  # noqa: F811
    """MedSAM2's released file, as the hub holds it ({"model": state_dict} of Hiera-T at 512 px; random
    numbers here), found offline in the Hugging Face cache and loaded strictly; it then propagates."""
    from salip_bench.engines.sam2_model import build_sam2_model

    cfg = yaml_config("model", "medsam2")
    torch.manual_seed(1)
    release = build_sam2_model(cfg).state_dict()
    torch.save({"model": release}, tmp_path / "MedSAM2_latest.pt")
    hf_snapshot(hub_cache, "wanglab/MedSAM2", {"MedSAM2_latest.pt": tmp_path / "MedSAM2_latest.pt"})
    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path / "ours"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    medsam2 = build_engine(cfg, "pretrained", "propagator_model")
    assert medsam2.model.image_size == 512 and medsam2.identity["weights"] != "random"
    for name, tensor in medsam2.model.state_dict().items():
        assert torch.equal(tensor, release[name]), name
    frames, masks = volume
    result = medsam2.propagate(frames, {2: masks[2]})
    assert result.frames_run == 4 and result.masks.shape == masks.shape


def test_memo_features_rebuild_upstreams_backbone_output(engine, volume):
    """The image predictor's memoised features, turned back into forward_image's output, are upstream's."""
    from salip_bench.engines.sam2_propagate import video_predictor_class

    frame = volume[0][2]
    predictor = video_predictor_class().around(engine.model, engine.frame_features)
    state = {"frames": volume[0], "images": [torch.zeros(3, 256, 256)] * 5, "device": torch.device("cpu"),
             "key_frames": frozenset()}
    with torch.inference_mode():
        _, _, ours, our_pos, _ = predictor._get_image_feature(state, 2, 1)
        upstream = engine.model.forward_image(engine.predictor._transforms(frame)[None])
        _, theirs, their_pos, _ = engine.model._prepare_backbone_features(upstream)
    for a, b in zip(ours + our_pos, theirs + their_pos):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_object_gone_gives_empty_slices(volume):
    gone = build_engine(yaml_config("model", "sam2_tiny"), "random")
    head = gone.model.sam_mask_decoder.pred_obj_score_head.layers[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-20.0)  # SAM 2 says: no object on any frame it decodes
    frames, masks = volume
    result = gone.propagate(frames, {2: masks[2]})
    assert (result.object_scores[[0, 1, 3, 4]] < 0).all()
    assert not result.masks[[0, 1, 3, 4]].any() and result.masks[2].any()


def test_bad_propagation_inputs_fail_in_one_line_before_any_work(engine, volume, tiny_sam):
    frames, masks = volume
    engine.reset()
    with pytest.raises(MemoryError, match="max_state_gb=1e-06.*offload_state_to_cpu"):
        engine.propagate(frames, {2: masks[2]}, max_state_gb=1e-6)
    with pytest.raises(ValueError, match="key slice 5 is outside the volume's 5 slices"):
        engine.propagate(frames, {5: masks[2]})
    with pytest.raises(ValueError, match="at least one key"):
        engine.propagate(frames, {})
    with pytest.raises(ValueError, match=r"uint8 frames"):
        engine.propagate(frames.astype(np.float32), {2: masks[2]})
    assert engine.counters()["encoder_passes"] == 0
    one = engine.propagate(frames[:1], {0: masks[0]})  # a one-slice volume: its key, nothing to run
    assert one.frames_run == 0 and one.masks.shape == (1, 48, 64)
    with pytest.raises(MissingRoleError, match=r"chosen by model=\).*model@propagator_model=sam2_hiera_t") as err:
        SalipPropagateMethod(None, None, None, None, {}, tiny_sam, lambda meta: (0, frames))
    assert "\n" not in str(err.value)


def test_key_slices_are_ranked_by_quality_when_the_prediction_has_one():
    mask = np.ones((2, 2), bool)
    assert key_score(Prediction(mask, info={"quality": 0.7, "retrieved_scores": [0.9]})) == (0.7, "quality")
    assert key_score(Prediction(mask, info={"quality": None, "retrieved_scores": [0.2, 0.9]})) == (0.9, "retrieval")
    assert key_score(Prediction(mask, info={"retrieved_scores": []}))[0] == float("-inf")


def test_sampled_slices_every_and_count():
    assert sampled_slices(30, 5, None) == [2, 7, 12, 17, 22, 27]
    assert sampled_slices(1, 5, None) == [0] and sampled_slices(1, None, 3) == [0]
    assert sampled_slices(30, None, 3) == [7, 14, 22] and sampled_slices(4, None, 9) == [0, 1, 2, 3]
    assert sampled_slices(3, 1, None) == [0, 1, 2]


def test_an_organ_volume_is_held_as_its_bounding_box_and_gives_back_every_slice():
    masks = np.zeros((9, 40, 30), bool)
    masks[3, 5:9, 2:4] = masks[8, 30:40, 20:30] = masks[5, 0, 0] = True
    held = OrganVolume.of(masks)
    assert held.box == (slice(3, 9), slice(0, 40), slice(0, 30)) and held.crop.shape == (6, 40, 30)
    assert all(np.array_equal(held[i], masks[i]) for i in range(9))
    small = np.zeros((9, 40, 30), bool)
    small[4:6, 10:12, 7] = True
    assert OrganVolume.of(small).crop.nbytes == 2 * 2 * 1
    assert all(np.array_equal(OrganVolume.of(small)[i], small[i]) for i in range(9))
    empty = OrganVolume.of(np.zeros((4, 6, 5), bool))
    assert empty.box is None and all(not empty[i].any() and empty[i].shape == (6, 5) for i in range(4))


def run_volumes(tmp_path, overrides):
    import pandas as pd

    from salip_bench.evaluation.harness import run

    out = tmp_path / "run"
    summary = run(compose_config(SMOKE + ["method=salip_propagate", "model=sam2_tiny", f"output_dir={out}",
                                          *overrides]), out)
    return out, summary, pd.read_csv(out / "results.csv")


@needs_data
def test_ct_abdomen_liver_end_to_end(tmp_path):
    out, summary, frame = run_volumes(tmp_path, ["dataset=nnunet", f"dataset.root={CT_ABDOMEN}",
                                                 "dataset.organs=[liver]", "method.every=6"])
    assert len(frame) == 30 and frame["status"].eq("ok").all() and frame["dice"].notna().all()
    keys = json.loads(frame["key_slices"].iloc[0])
    assert frame["slice_role"].tolist() == ["key" if s in keys else "propagated" for s in frame["slice"]]
    assert len(keys) == 1 and keys[0] in (2, 8, 14, 20, 26)
    assert frame["key_source"].eq("quality").all()  # ranked by SaLIP's label-free quality (qc=salip)
    volume = summary["per_volume"]["tsct_001/liver"]
    assert volume["dice_3d"] is not None and "nsd_3d" in volume and "hd95_3d" in volume
    assert volume["work"]["everything_passes"] == 5 < 30 and volume["work"]["propagation_frames"] == 29
    assert volume["work"]["sam_encoder_passes"] == 30  # one per slice: the 4 sampled non-key ones held
    assert volume["work"]["clip_images_encoded"] > 0
    assert frame["everything_passes"].sum() == 5 and frame["everything_passes"].iloc[1:].eq(0).all()
    written = nib.load(str(out / "volumes" / "tsct_001.nii.gz"))
    source = nib.load(str(CT_ABDOMEN / "imagesTr" / "tsct_001_0000.nii.gz"))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 5}


@needs_data
def test_mri_brain_slice_range_and_one_slice_volume(tmp_path):
    brain = ["dataset=volumes", f"dataset.root={MRI}", "dataset.image_pattern='*_T1w.nii.gz'",
             "dataset.mask_pattern='{id}_brainmask.nii.gz'", "dataset.prompts=brain"]
    out, summary, frame = run_volumes(tmp_path, brain + ["dataset.slice_range=[40,50]", "method.count=2"])
    assert frame["slice"].tolist() == list(range(40, 50)) and frame["status"].eq("ok").all()
    assert frame["slice_role"].isin(["key", "propagated"]).all() and frame["slice_role"].eq("key").sum() == 1
    volume = next(iter(summary["per_volume"].values()))
    assert volume["work"]["everything_passes"] == 2 and volume["work"]["propagation_frames"] == 9
    assert volume["dice_3d"] is not None and (out / "volumes").is_dir()
    _, _, one = run_volumes(tmp_path / "one", brain + ["dataset.slice_range=[45,46]"])
    assert len(one) == 1 and one["status"].eq("ok").all() and one["propagation_frames"].iloc[0] == 0


@needs_data
def test_a_propagator_of_another_model_encodes_every_slice_once(tmp_path):
    brain = ["dataset=volumes", f"dataset.root={MRI}", "dataset.image_pattern='*_T1w.nii.gz'",
             "dataset.mask_pattern='{id}_brainmask.nii.gz'", "dataset.prompts=brain", "dataset.slice_range=[40,46]"]
    _, summary, frame = run_volumes(tmp_path, brain + ["method.count=2", "model=sam_tiny",
                                                       "model@propagator_model=sam2_tiny"])
    assert frame["status"].eq("ok").all() and frame["slice_role"].eq("key").sum() == 1
    work = next(iter(summary["per_volume"].values()))["work"]
    # SAM on the 2 sampled slices, SAM 2.1 on all 6 (its key slice's features are its own)
    assert work["everything_passes"] == 2 and work["sam_encoder_passes"] == 2 + 6
    assert work["propagation_frames"] == 5


@needs_data
def test_a_volumes_organs_share_each_sampled_slices_everything_pass_and_frames(tmp_path):
    data = ["dataset=nnunet", f"dataset.root={CT_ABDOMEN}", "dataset.slice_range=[10,17]", "method.every=3"]
    out, summary, frame = run_volumes(tmp_path / "both", data + ["dataset.organs=[liver,spleen,stomach]"])
    assert frame["status"].eq("ok").all() and len(frame) == 21
    work = {name.split("/")[1]: volume["work"] for name, volume in summary["per_volume"].items()}
    # the volume is computed at its first row: 3 sampled slices, one "everything" pass each for all organs
    assert [work[o]["everything_passes"] for o in ("liver", "spleen", "stomach")] == [3, 0, 0]
    # frames kept while the memo had room: each slice encoded once for three propagations
    assert [work[o]["sam_encoder_passes"] for o in ("liver", "spleen", "stomach")] == [7, 0, 0]
    found = frame.groupby("organ")["slice_role"].apply(lambda r: r.ne(NOT_FOUND).all()).sum()
    assert [work[o]["propagation_frames"] for o in ("liver", "spleen", "stomach")] == [6 * found, 0, 0]
    _, _, spleen = run_volumes(tmp_path / "alone", data + ["dataset.organs=[spleen]"])
    # the same answer as a spleen-only run, slice for slice
    mine = frame[frame["organ"] == "spleen"].reset_index(drop=True)
    for column in ("slice_role", "key_slices", "pred_area", "dice"):
        assert mine[column].tolist() == spleen[column].tolist(), column
    assert spleen["everything_passes"].sum() == 3


@needs_data
def test_organ_found_on_no_sampled_slice_is_an_empty_recorded_prediction(tmp_path):
    # no candidate survives the area filter: SaLIP finds the organ nowhere
    _, summary, frame = run_volumes(tmp_path, ["dataset=nnunet", f"dataset.root={CT_ABDOMEN}", "dataset.organs=[liver]",
                                               "dataset.slice_range=[10,16]", "filter.max_area=0.00001"])
    assert frame["status"].eq("ok").all() and frame["pred_area"].eq(0).all()
    assert frame["slice_role"].eq(NOT_FOUND).all() and frame["propagation_frames"].sum() == 0
    assert summary["per_volume"]["tsct_001/liver"]["dice_3d"] == 0.0


def test_a_dataset_without_volumes_is_refused_in_one_line(engine):
    from salip_bench.registry import PluginError

    with pytest.raises(PluginError, match="needs a volume dataset"):
        SalipPropagateMethod(None, None, None, None, {}, engine, None)


def test_propagate_recipe_runs_both_methods_on_the_same_volumes():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=propagate"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {"method": "salip,salip_propagate"}
    data = ["dataset=nnunet", f"dataset.root={CT_ABDOMEN}", "dataset.organs=[liver]"]
    jobs = [compose_config(["experiment=propagate", *data, f"method={m}"]) for m in ("salip", "salip_propagate")]
    assert [j["method"]["name"] for j in jobs] == ["salip", "salip_propagate"]
    assert jobs[0]["dataset"] == jobs[1]["dataset"] and jobs[0]["model"] == jobs[1]["model"]
    assert jobs[0]["model"]["engine"] == "sam2" and jobs[1].get("propagator_model") is None
