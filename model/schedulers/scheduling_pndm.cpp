#include "model/schedulers/scheduling_pndm.h"

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::schedulers {

using io::get_or;

PNDMSchedulerConfig PNDMSchedulerConfig::from_json(const nlohmann::json& json) {
  const auto config = effective_config(json);
  PNDMSchedulerConfig c;
  c.read(config, /*with_zero_snr=*/false);
  c.skip_prk_steps = get_or(config, "skip_prk_steps", c.skip_prk_steps);
  c.set_alpha_to_one = get_or(config, "set_alpha_to_one", c.set_alpha_to_one);
  c.prediction_type = get_or(config, "prediction_type", c.prediction_type);
  c.timestep_spacing = get_or(config, "timestep_spacing", c.timestep_spacing);
  c.steps_offset = get_or(config, "steps_offset", c.steps_offset);
  return c;
}

PNDMScheduler::PNDMScheduler(PNDMSchedulerConfig config) : config_(std::move(config)) {
  check_choice(name(), "prediction_type", config_.prediction_type, {"epsilon", "v_prediction"});
  check_choice(name(), "timestep_spacing", config_.timestep_spacing,
               {"linspace", "leading", "trailing"});
  betas_ = make_betas(config_, name());
  alphas_ = 1.0 - betas_;
  alphas_cumprod_ = torch::cumprod(alphas_, 0);
  // The "previous" alpha product of the last step: 1, or the one of timestep 0.
  final_alpha_cumprod_ = config_.set_alpha_to_one ? torch::tensor(1.0f) : alphas_cumprod_[0];
}

void PNDMScheduler::set_timesteps(int64_t num_inference_steps) {
  if (num_inference_steps < 1) {
    throw std::invalid_argument("PNDMScheduler: num_inference_steps must be at least 1, got " +
                                std::to_string(num_inference_steps));
  }
  const int64_t n = num_inference_steps;
  const int64_t train = config_.num_train_timesteps;
  num_inference_steps_ = n;
  std::vector<int64_t> ts;  // diffusers' self._timesteps, ascending
  if (config_.timestep_spacing == "linspace") {
    for (double v : np::linspace(0, static_cast<double>(train - 1), n)) {
      ts.push_back(static_cast<int64_t>(np::round(v)));
    }
  } else if (config_.timestep_spacing == "leading") {
    const int64_t step_ratio = train / n;
    for (int64_t i = 0; i < n; ++i) ts.push_back(i * step_ratio + config_.steps_offset);
  } else {  // trailing
    const double step_ratio = static_cast<double>(train) / static_cast<double>(n);
    for (double v : np::arange(static_cast<double>(train), 0, -step_ratio)) {
      ts.push_back(static_cast<int64_t>(np::round(v)));
    }
    std::reverse(ts.begin(), ts.end());
    for (auto& t : ts) t -= 1;
  }

  prk_timesteps_.clear();
  plms_timesteps_.clear();
  const auto count = static_cast<int64_t>(ts.size());
  if (config_.skip_prk_steps) {
    // concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]: the second-to-last timestep twice.
    std::vector<int64_t> plms(ts.begin(), ts.end() - 1);
    if (count >= 2) plms.push_back(ts[static_cast<size_t>(count - 2)]);
    plms.push_back(ts.back());
    plms_timesteps_.assign(plms.rbegin(), plms.rend());
  } else {
    if (count < pndm_order_) {
      throw std::invalid_argument(
          "PNDMScheduler: the Runge-Kutta warm-up (skip_prk_steps=false) needs at least " +
          std::to_string(pndm_order_) + " inference steps, got " + std::to_string(n));
    }
    // ts[-4:].repeat(2) + tile([0, half_step], 4), then [:-1].repeat(2)[1:-1][::-1].
    const int64_t half_step = train / n / 2;
    std::vector<int64_t> prk;
    for (int64_t i = count - pndm_order_; i < count; ++i) {
      prk.push_back(ts[static_cast<size_t>(i)]);
      prk.push_back(ts[static_cast<size_t>(i)] + half_step);
    }
    prk.pop_back();
    std::vector<int64_t> doubled;
    for (int64_t t : prk) doubled.insert(doubled.end(), {t, t});
    std::vector<int64_t> inner(doubled.begin() + 1, doubled.end() - 1);
    prk_timesteps_.assign(inner.rbegin(), inner.rend());
    plms_timesteps_.assign(ts.rbegin() + 3, ts.rend());
  }
  std::vector<int64_t> all = prk_timesteps_;
  all.insert(all.end(), plms_timesteps_.begin(), plms_timesteps_.end());
  timesteps_ = torch::tensor(all, torch::kInt64);

  ets_.clear();
  counter_ = 0;
  cur_model_output_ = at::Tensor();
  // diffusers keeps cur_sample across set_timesteps; a fresh schedule starts with none.
  cur_sample_ = at::Tensor();
}

at::Tensor PNDMScheduler::step(const at::Tensor& model_output, const at::Tensor& timestep,
                               const at::Tensor& sample, std::optional<at::Generator>) {
  if (counter_ < static_cast<int64_t>(prk_timesteps_.size()) && !config_.skip_prk_steps) {
    return step_prk(model_output, timestep, sample);
  }
  return step_plms(model_output, timestep, sample);
}

at::Tensor PNDMScheduler::step_prk(const at::Tensor& model_output_in, const at::Tensor& timestep,
                                   const at::Tensor& sample) {
  if (num_inference_steps_ == 0) {
    throw std::logic_error("PNDMScheduler: call set_timesteps before step");
  }
  const int64_t diff_to_prev =
      counter_ % 2 ? 0 : config_.num_train_timesteps / num_inference_steps_ / 2;
  const int64_t prev_timestep = timestep.item<int64_t>() - diff_to_prev;
  const int64_t t = prk_timesteps_[static_cast<size_t>(counter_ / 4 * 4)];

  auto model_output = model_output_in;
  auto accumulate = [&](double weight) {
    auto term = model_output * weight;
    if (cur_model_output_.defined()) {
      cur_model_output_.add_(term);
    } else {
      cur_model_output_ = term;
    }
  };
  if (counter_ % 4 == 0) {
    accumulate(1.0 / 6);
    ets_.push_back(model_output);
    cur_sample_ = sample;
  } else if ((counter_ - 1) % 4 == 0) {
    accumulate(1.0 / 3);
  } else if ((counter_ - 2) % 4 == 0) {
    accumulate(1.0 / 3);
  } else {
    model_output = cur_model_output_ + model_output * (1.0 / 6);
    cur_model_output_ = at::Tensor();
  }

  const auto& cur_sample = cur_sample_.defined() ? cur_sample_ : sample;
  auto prev_sample = get_prev_sample(cur_sample, t, prev_timestep, model_output);
  counter_ += 1;
  return prev_sample;
}

at::Tensor PNDMScheduler::step_plms(const at::Tensor& model_output_in, const at::Tensor& timestep,
                                    const at::Tensor& sample_in) {
  if (num_inference_steps_ == 0) {
    throw std::logic_error("PNDMScheduler: call set_timesteps before step");
  }
  if (!config_.skip_prk_steps && ets_.size() < 3) {
    throw std::logic_error(
        "PNDMScheduler: PLMS steps can only run after 12 Runge-Kutta steps (skip_prk_steps=false)");
  }
  const int64_t step_ratio = config_.num_train_timesteps / num_inference_steps_;
  int64_t t = timestep.item<int64_t>();
  int64_t prev_timestep = t - step_ratio;

  if (counter_ != 1) {
    if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
    ets_.push_back(model_output_in);
  } else {
    // The second step re-evaluates the first interval (a Heun-like correction).
    prev_timestep = t;
    t = t + step_ratio;
  }

  auto model_output = model_output_in;
  auto sample = sample_in;
  const auto& e = ets_;
  const size_t k = e.size();
  if (k == 1 && counter_ == 0) {
    cur_sample_ = sample;
  } else if (k == 1 && counter_ == 1) {
    model_output = (model_output + e[k - 1]) / 2;
    sample = cur_sample_;
    cur_sample_ = at::Tensor();
  } else if (k == 2) {
    model_output = (e[k - 1] * 3 - e[k - 2]) / 2;
  } else if (k == 3) {
    model_output = (e[k - 1] * 23 - e[k - 2] * 16 + e[k - 3] * 5) / 12;
  } else {
    model_output = (e[k - 1] * 55 - e[k - 2] * 59 + e[k - 3] * 37 - e[k - 4] * 9) * (1.0 / 24);
  }

  auto prev_sample = get_prev_sample(sample, t, prev_timestep, model_output);
  counter_ += 1;
  return prev_sample;
}

at::Tensor PNDMScheduler::get_prev_sample(const at::Tensor& sample, int64_t timestep,
                                          int64_t prev_timestep, at::Tensor model_output) const {
  // Formula (9) of the PNDM paper, in float32 as diffusers' 0-d tensors.
  auto alpha_prod_t = alphas_cumprod_[timestep];
  auto alpha_prod_t_prev =
      prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
  auto beta_prod_t = 1 - alpha_prod_t;
  auto beta_prod_t_prev = 1 - alpha_prod_t_prev;

  if (config_.prediction_type == "v_prediction") {
    model_output = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
  }

  auto sample_coeff = (alpha_prod_t_prev / alpha_prod_t).pow(0.5);
  auto model_output_denom_coeff = alpha_prod_t * beta_prod_t_prev.pow(0.5) +
                                  (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).pow(0.5);
  return sample_coeff * sample -
         (alpha_prod_t_prev - alpha_prod_t) * model_output / model_output_denom_coeff;
}

}  // namespace ldcp::schedulers
