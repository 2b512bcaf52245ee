"""Scheduler references: diffusers' scheduler classes run step by step on recorded inputs.

Every sampler is built as the pipeline builds it, `Class.from_config(config)` of the model's
scheduler config (SD1.5's is a PNDMScheduler config), from four configs: tiny-a's saved SD1.5
config and three written here (v-prediction with trailing spacing and zero-SNR betas, trained
betas with linspace spacing, PRK steps and thresholding, a cosine schedule with leading
spacing). For each case (a sampler or a class with overrides, a config, a step count) the
script records the timesteps, the sigmas, init_noise_sigma and a whole sampling loop on a
[1, 4, 8, 8] sample: at each step the model output (drawn from its own generator), the
scale_model_input output and the step output. Stochastic steps draw through
torch.Generator("cpu").manual_seed(step_seed), passed to every step as the pipeline does.
A sweep records the timesteps and sigmas of every named sampler for many step counts.

Writes DIR/ref/schedulers/: cases.json, case_<id>.safetensors, sweep_<config>_<sampler>.safetensors,
configs/<name>/scheduler_config.json.
"""

import inspect
import json

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from common import mark_done, models_dir, parse_args, ref_dir, save_json, save_tensors

CLASSES = {
    "PNDMScheduler": PNDMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
}

# The named samplers, as ldcp::schedulers::make_scheduler builds them.
SAMPLERS = {
    "pndm": ("PNDMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler",
                 dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=False)),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)),
}

STEP_COUNTS = (1, 4, 7, 20)
SWEEP_COUNTS = tuple(range(1, 61)) + (75, 100, 250, 500, 999, 1000)
SHAPE = (1, 4, 8, 8)


def written_configs():
    """The configs besides SD1.5's, as scheduler_config.json files of PNDMScheduler."""
    rng = np.random.RandomState(7)
    trained = np.linspace(0.0002, 0.03, 500) ** 1.1 * (1 + 0.05 * rng.uniform(-1, 1, 500))
    return {
        # The zero-SNR recipe: v-prediction, trailing spacing, rescaled betas, plus DDIM clipping.
        "vpred_trailing": dict(
            _class_name="PNDMScheduler", num_train_timesteps=1000, beta_start=0.0001,
            beta_end=0.02, beta_schedule="linear", prediction_type="v_prediction",
            timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True,
            skip_prk_steps=True, clip_sample=True, rescale_betas_zero_snr=True),
        # Trained betas, linspace spacing, PNDM's Runge-Kutta warm-up, dynamic thresholding.
        "trained_linspace": dict(
            _class_name="PNDMScheduler", num_train_timesteps=500,
            trained_betas=[float(b) for b in trained], timestep_spacing="linspace",
            skip_prk_steps=False, set_alpha_to_one=False, clip_sample=False, thresholding=True,
            dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
        # The cosine schedule with leading spacing; keys absent take each class's defaults.
        "cosine_leading": dict(
            _class_name="PNDMScheduler", beta_schedule="squaredcos_cap_v2", steps_offset=1,
            skip_prk_steps=True, timestep_spacing="leading"),
    }


# Variants of the classes beyond the named samplers: (id, class, overrides, configs, eta).
VARIANTS = [
    ("ddim_eta", "DDIMScheduler", {}, ("sd15", "vpred_trailing", "cosine_leading"), 0.5),
    ("pndm_prk", "PNDMScheduler", dict(skip_prk_steps=False), ("sd15", "vpred_trailing"), 0.0),
    ("euler_karras", "EulerDiscreteScheduler", dict(use_karras_sigmas=True),
     ("sd15", "vpred_trailing"), 0.0),
    ("euler_sigma_min", "EulerDiscreteScheduler",
     dict(final_sigmas_type="sigma_min", timestep_spacing="trailing"), ("sd15",), 0.0),
    ("euler_continuous", "EulerDiscreteScheduler", dict(timestep_type="continuous"),
     ("vpred_trailing",), 0.0),
    ("dpm_order3_heun", "DPMSolverMultistepScheduler",
     dict(solver_order=3, solver_type="heun", lower_order_final=False),
     ("sd15", "vpred_trailing"), 0.0),
    ("dpm_order3_karras", "DPMSolverMultistepScheduler",
     dict(solver_order=3, use_karras_sigmas=True), ("sd15", "cosine_leading"), 0.0),
    ("dpm_sde", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"),
     ("sd15", "vpred_trailing"), 0.0),
    ("dpm_sde_heun", "DPMSolverMultistepScheduler",
     dict(algorithm_type="sde-dpmsolver++", solver_type="heun", final_sigmas_type="sigma_min"),
     ("sd15",), 0.0),
    ("dpmsolver_order3", "DPMSolverMultistepScheduler",
     dict(algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min"),
     ("sd15", "trained_linspace"), 0.0),
    ("dpmsolver_sde", "DPMSolverMultistepScheduler",
     dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min", euler_at_final=True),
     ("sd15",), 0.0),
    ("dpm_sample_pred", "DPMSolverMultistepScheduler",
     dict(prediction_type="sample", thresholding=True, timestep_spacing="trailing"),
     ("sd15",), 0.0),
]


def build(class_name, overrides, config):
    return CLASSES[class_name].from_config(config, **overrides)


def run_case(scheduler, steps, eta, seed):
    """The pipeline's denoising loop with random model outputs; returns the recorded tensors."""
    scheduler.set_timesteps(steps)
    out = {"timesteps": scheduler.timesteps}
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor):
        out["sigmas"] = sigmas
    init_noise_sigma = float(scheduler.init_noise_sigma)
    latents_gen = torch.Generator("cpu").manual_seed(seed)
    model_gen = torch.Generator("cpu").manual_seed(seed + 1)
    step_gen = torch.Generator("cpu").manual_seed(seed + 2)
    sample = torch.randn(SHAPE, generator=latents_gen) * scheduler.init_noise_sigma
    out["sample"] = sample
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = step_gen
    for i, t in enumerate(scheduler.timesteps):
        scaled = scheduler.scale_model_input(sample, t)
        model_output = torch.randn(SHAPE, generator=model_gen)
        sample = scheduler.step(model_output, t, sample, **kwargs).prev_sample
        out[f"scaled.{i}"] = scaled
        out[f"model_output.{i}"] = model_output
        out[f"prev_sample.{i}"] = sample
    # Identity steps (scale_model_input) return their input: store copies, not shared storage.
    return {k: v.clone() for k, v in out.items()}, init_noise_sigma


def main() -> None:
    args = parse_args(__doc__)
    out_dir = ref_dir(args.parity_dir, "schedulers")
    configs = {"sd15": models_dir(args.parity_dir) / "tiny-a" / "scheduler"}
    for name, config in written_configs().items():
        folder = out_dir / "configs" / name
        save_json(folder / "scheduler_config.json", config)
        configs[name] = folder
    # The config the pipeline holds: the model's scheduler, loaded with from_pretrained.
    loaded = {name: PNDMScheduler.from_pretrained(folder).config for name, folder in configs.items()}

    cases = []
    plan = []
    for config_name in configs:
        for sampler, (class_name, overrides) in SAMPLERS.items():
            plan.append(dict(sampler=sampler, cls=class_name, overrides=overrides,
                             config=config_name, eta=0.0))
    for variant, class_name, overrides, config_names, eta in VARIANTS:
        for config_name in config_names:
            plan.append(dict(variant=variant, cls=class_name, overrides=overrides,
                             config=config_name, eta=eta))
    seed = 100
    for entry in plan:
        for steps in STEP_COUNTS:
            seed += 10
            label = entry.get("sampler") or entry["variant"]
            case_id = f"{entry['config']}-{label}-{steps}"
            record = dict(id=case_id, config=str(configs[entry["config"]].relative_to(args.parity_dir)),
                          cls=entry["cls"], overrides=entry["overrides"], steps=steps,
                          eta=entry["eta"], seed=seed)
            if "sampler" in entry:
                record["sampler"] = entry["sampler"]
            else:
                record["variant"] = entry["variant"]
            try:
                scheduler = build(entry["cls"], entry["overrides"], loaded[entry["config"]])
                tensors, init_noise_sigma = run_case(scheduler, steps, entry["eta"], seed)
            except Exception as e:  # noqa: BLE001 - the C++ side must fail too
                record["error"] = f"{type(e).__name__}: {e}"
                cases.append(record)
                continue
            record["init_noise_sigma"] = init_noise_sigma
            record["timesteps_dtype"] = str(tensors["timesteps"].dtype)
            save_tensors(out_dir / f"case_{case_id}.safetensors", tensors)
            cases.append(record)

    sweeps = []
    for config_name in configs:
        for sampler, (class_name, overrides) in SAMPLERS.items():
            tensors, counts, errors = {}, [], []
            for steps in SWEEP_COUNTS:
                try:
                    scheduler = build(class_name, overrides, loaded[config_name])
                    scheduler.set_timesteps(steps)
                except Exception:  # noqa: BLE001
                    errors.append(steps)
                    continue
                counts.append(steps)
                tensors[f"timesteps.{steps}"] = scheduler.timesteps.clone()
                sigmas = getattr(scheduler, "sigmas", None)
                if isinstance(sigmas, torch.Tensor):
                    tensors[f"sigmas.{steps}"] = sigmas.clone()
            file = f"sweep_{config_name}_{sampler}.safetensors"
            save_tensors(out_dir / file, tensors)
            sweeps.append(dict(config=str(configs[config_name].relative_to(args.parity_dir)),
                               sampler=sampler, file=file, counts=counts, errors=errors))

    save_json(out_dir / "cases.json", dict(cases=cases, sweeps=sweeps))
    failed = [c["id"] for c in cases if "error" in c]
    print(f"wrote {len(cases)} cases ({len(failed)} where the reference raises: {failed})")
    mark_done(out_dir)


if __name__ == "__main__":
    main()
