from backpressure_client import Backpressure, BackpressureConfig, BackpressureError


def test_full_window_rejects_and_release_frees_a_slot() -> None:
    bp = Backpressure(BackpressureConfig(congestion_window_min=1, congestion_window_max=1))
    permit = bp.try_acquire()
    try:
        bp.try_acquire()
    except BackpressureError as exc:
        assert exc.window == 1
    else:
        raise AssertionError("a full window admitted a request")
    permit.release()
    bp.try_acquire().release()
    assert bp.in_flight == 0
