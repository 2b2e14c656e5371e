"""The PID controller of Eq. 12 against updates computed by hand; its callback's device."""

from types import SimpleNamespace

import pytest
import torch

from vaegan.models.controller import PIDController, PIDUpdate


def test_constant_error_ramps_k_linearly():
    c = PIDController(ki=1e-3, kp=1e-2, kd=1e-2)
    ks = [c.update(0.2) for _ in range(5)]
    # constant error: the P and D differences vanish, the integral adds ki * e each iteration
    assert ks == pytest.approx([2e-4 * (t + 1) for t in range(5)])


def test_full_pid_update_by_hand():
    c = PIDController(ki=0.1, kp=0.2, kd=0.3, k_init=0.5)
    e = [0.1, 0.3, -0.2, 0.05]
    k = 0.5
    k += 0.1 * e[0]  # no history yet: no P or D kick
    assert c.update(e[0]) == pytest.approx(k)
    k += 0.1 * e[1] + 0.2 * (e[1] - e[0]) + 0.3 * (e[1] - 2 * e[0] + e[0])  # e_{t-2} starts at e_0
    assert c.update(e[1]) == pytest.approx(k)
    k += 0.1 * e[2] + 0.2 * (e[2] - e[1]) + 0.3 * (e[2] - 2 * e[1] + e[0])
    assert c.update(e[2]) == pytest.approx(k)
    k += 0.1 * e[3] + 0.2 * (e[3] - e[2]) + 0.3 * (e[3] - 2 * e[2] + e[1])
    assert c.update(e[3]) == pytest.approx(k)
    assert c.pid_terms["D"] == pytest.approx(0.3 * (e[3] - 2 * e[2] + e[1]))


def test_k_is_clamped_to_unit_interval():
    c = PIDController(ki=1.0, kp=0.0, kd=0.0)
    assert c.update(5.0) == 1.0
    assert c.update(5.0) == 1.0
    assert c.update(-0.25) == 0.75  # unwinds at once from the clamp (no hidden integral state)
    assert c.update(-10.0) == 0.0
    assert PIDController(ki=1.0).update(-1.0) == 0.0  # starts at 0 and cannot go negative


def test_proportional_special_case_is_began():
    errors = [0.3, -0.1, 0.25, 0.0, 0.4, -0.35]
    began_k, lambda_k = 0.0, 1e-3
    c = PIDController(ki=lambda_k, kp=0.0, kd=0.0)
    for e in errors:
        began_k = min(max(began_k + lambda_k * e, 0.0), 1.0)  # BEGAN: k_{t+1} = k_t + lambda_k e_t
        assert c.update(e) == began_k  # exactly, not approximately


def test_smoothing_averages_error_before_differencing():
    c = PIDController(ki=0.0, kp=1.0, kd=0.0, smoothing=2, k_init=0.5)
    c.update(0.2)  # s = 0.2
    k = c.update(0.4)  # s = 0.3: P = 0.3 - 0.2
    assert k == pytest.approx(0.6)
    k = c.update(0.0)  # s = 0.2: P = 0.2 - 0.3
    assert k == pytest.approx(0.5)


def test_state_dict_round_trip_continues_identically():
    a = PIDController(ki=0.01, kp=0.02, kd=0.03, smoothing=3)
    for e in [0.5, 0.1, 0.3, 0.2]:
        a.update(e)
    b = PIDController(ki=0.01, kp=0.02, kd=0.03, smoothing=3)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    for e in [0.7, -0.4, 0.05]:
        assert b.update(e) == a.update(e)


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="smoothing"):
        PIDController(smoothing=0)
    with pytest.raises(ValueError, match="k_init"):
        PIDController(k_init=2.0)


def controller_devices(controller: PIDController) -> set[str]:
    return {str(t.device) for t in (controller.k, controller.window, controller.num_errors, controller.history,
                                    controller._pid_terms)}


def test_fit_start_puts_the_controller_on_the_modules_device_and_a_restore_keeps_it():
    """Lightning restores callbacks before on_fit_start (or, for some strategies, after it): either
    way the state is on the module's device before the first iteration."""
    a = PIDController(ki=0.01, kp=0.02, kd=0.03, smoothing=3)
    for e in [0.5, 0.1]:
        a.update(e)
    callback = PIDUpdate(ki=0.01, kp=0.02, kd=0.03, smoothing=3)
    callback.load_state_dict(a.state_dict())
    callback.on_fit_start(None, SimpleNamespace(device=torch.device("meta")))
    assert controller_devices(callback.controller) == {"meta"}
    callback.load_state_dict(a.state_dict())
    assert controller_devices(callback.controller) == {"meta"}

