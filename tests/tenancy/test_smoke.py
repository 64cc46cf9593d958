def test_world(world):
    r = world.admin.get(f"{world.base}/workspaces")
    assert r.status_code == 200, r.text
    assert len(r.json()) == 2
