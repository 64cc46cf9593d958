def test_smoke(example):
    for r in example.resources:
        print(r.type, r.name)
    print(example.outputs, example.secret_outputs)
