"Lesson-style code, in the course's call forms, run against `from dl2.course import *`."
import contextlib, importlib, io, warnings
import pytest
from fastcore.test import test_close as close
from dl2.course import *
from dl2.course import test as check, test_eq as eq, test_near as check_near, test_near_zero as check_near_zero
import dl2.course
del test, test_eq, test_near, test_near_zero   # pytest would collect them as tests

@pytest.fixture(scope='module')
def data():
    "Flat 28x28 inputs of two classes (is the top half brighter?), as lesson 10's `DataBunch(train_dl, valid_dl, c)`."
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (512,), generator=g)
    x = torch.randn(512, 28, 28, generator=g) * 0.5
    x[:, :14] += y[:, None, None] * 2. - 1
    train_ds, valid_ds = Dataset(x[:256].view(256, -1), y[:256]), Dataset(x[256:].view(256, -1), y[256:])
    return DataBunch(*get_dls(train_ds, valid_ds, 32), 2)

@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    "An Imagenette-like folder: train/ and val/ with two class folders of small RGB JPEGs."
    path = tmp_path_factory.mktemp('images')
    for split in ('train', 'val'):
        for c, cls in enumerate(('n01440764', 'n02102040')):
            (path/split/cls).mkdir(parents=True)
            for i in range(4):
                a = np.full((30, 40, 3), 60 + 120 * c, np.uint8); a[:, :i + 1] = 255
                PIL.Image.fromarray(a).save(path/split/cls/f'{i}.JPEG')
    return path

def quiet(f, *args, **kwargs):
    "`f(*args, **kwargs)` with its printing swallowed; what it printed."
    out = io.StringIO()
    with contextlib.redirect_stdout(out): f(*args, **kwargs)
    return out.getvalue()

def test_names_lesson_cells_use_without_importing():
    for name in ['datasets', 'init', 'PIL', 'mimetypes', 'tensor', 'Path', 'os', 'partial', 'math', 'plt', 'np', 'operator',
                 'OrderedDict', 'F', 'nn', 'optim', 'DataLoader', 'master_bar', 'progress_bar', 'Any']:
        assert name in dl2.course.__all__, name
    assert datasets.untar_data is dl2.datasets.untar_data and datasets.URLs.IMAGENETTE_160.endswith('imagenette2-160.tgz')
    assert URLs.IMAGENETTE.endswith('.tgz') and init is torch.nn.init and PIL.Image.open

def test_course_reexports_every_lesson_module():
    import pkgutil
    not_lesson = {'course', 'train', 'cli', 'distributed', 'image_folder',   # a command, several processes, the image-folder engine (beyond the course)
                  'fast'}   # the speed wing
    lesson = {m.name for m in pkgutil.iter_modules(dl2.__path__) if not m.name.startswith('_')} - not_lesson
    eq(sorted(lesson - set(dl2.course._REEXPORTED)), [])
    own = {'test', 'test_eq', 'near', 'test_near', 'test_near_zero', 'CudaCallback', 'Runner', 'get_runner', 'get_batch',
           'get_cnn_layers', 'get_cnn_model', 'get_learner', 'get_learn_run', 'append_stats', 'children', 'model_summary',
           'MakeRGB', 'databunchify', 'norm_imagenette',
           'uniqueify', 'lin_comb', 'pg_dicts'}
    for m in dl2.course._REEXPORTED:    # everything else is dl2's own object
        mod = importlib.import_module(f'dl2.{m}')
        eq([n for n in mod.__all__ if n not in own and getattr(dl2.course, n) is not getattr(mod, n)], [])

def test_test_helpers():
    eq(1 + 1, 2)
    check(3, 4, operator.lt)
    check_near(tensor([1., 2.]), tensor([1.00001, 2.]))
    with pytest.raises(AssertionError): check_near(tensor([1., 2.]), tensor([1.1, 2.]))
    assert near(tensor(1.), tensor(1.000001)) and not near(tensor(1.), tensor(1.01))
    check_near_zero(tensor(1e-4))
    check_near_zero(0.01, 0.1)
    with pytest.raises(AssertionError): check_near_zero(tensor(0.01))

def test_databunch_third_argument_is_c(data):
    eq((data.c, data.c_out, data.c_in), (2, 2, 1))
    eq(len(data.train_ds), 256)

def test_cuda_callback_uses_the_device_there_is(data):
    cb = CudaCallback()
    assert isinstance(cb, DeviceCallback) and cb.device == default_device()
    if cb.device.type == 'cuda': return
    dl2.course._no_cuda_note.cache_clear()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        CudaCallback(); CudaCallback()
    eq(len(w), 1)
    learn, run = get_runner(nn.Sequential(Lambda(flatten), nn.Linear(784, 2)), data, 0.1, [CudaCallback])
    run.fit(1, learn)
    assert next(learn.model.parameters()).device.type == default_device().type

class CourseTransformX(Callback):
    "A callback written the course's way: it replaces the batch through `self.run`, and says nothing."
    _order = 2
    def __init__(self, tfm): self.tfm = tfm
    def begin_batch(self): self.run.xb = self.tfm(self.xb)

class Spy(Callback):
    "Records the shape of every batch the model is given, and the learner's training mode."
    _order = 5
    def begin_fit(self): self.shapes, self.modes = [], []
    def begin_batch(self): self.shapes.append(tuple(self.xb.shape)); self.modes.append(self.run.in_train)

def test_callback_set_runner_and_run_attribute():
    class Holder: xb = 'batch'
    cb = CourseTransformX(str.upper)
    cb.set_runner(Holder)
    assert cb.run is Holder and cb.learn is Holder
    cb.begin_batch()
    eq(Holder.xb, 'BATCH')

def test_get_runner_trains_with_the_one_learner(data, monkeypatch):
    model = nn.Sequential(Lambda(flatten), nn.Linear(784, 2))
    cbfs = [Recorder, partial(AvgStatsCallback, accuracy), partial(CourseTransformX, view_tfm(1, 28, 28)), Spy]
    learn, run = get_runner(model, data, 0.2, cbfs)           # positional, as lesson 10 calls it
    assert isinstance(learn, Learner) and isinstance(learn.opt, torch.optim.SGD)
    fits = []
    real_fit = Learner.fit
    monkeypatch.setattr(Learner, 'fit', lambda self, *a, **kw: (fits.append(a), real_fit(self, *a, **kw))[1])
    out = quiet(run.fit, 2, learn)
    eq(fits, [(2,)])                                       # the runner trains through `Learner.fit`
    eq(len(run.recorder.losses), 2 * len(data.train_dl))
    assert run.recorder.losses[-1] < run.recorder.losses[0]
    eq(len(run.avg_stats.history), 2)
    assert run.avg_stats.history[-1]['valid_accuracy'] > 0.9 and 'valid_accuracy' in out
    assert set(run.spy.shapes) <= {(32, 1, 28, 28), (64, 1, 28, 28)}   # the course-style callback reshaped every batch
    eq(run.spy.modes.count(True), 2 * len(data.train_dl))
    assert run.model is learn.model and run.opt is learn.opt and run.in_train is False
    learn2, run2 = get_runner(model, data, 0.2, None, partial(sgd_opt, wd=0.))
    assert isinstance(learn2.opt, Optimizer) and run2.cbs == []

def test_callbacks_returning_true_skip_as_in_lesson_4(data):
    class NoValidation(Callback):
        def begin_validate(self): return True
    learn, run = get_runner(nn.Sequential(Lambda(flatten), nn.Linear(784, 2)), data, 0.1, [NoValidation, Spy])
    run.fit(1, learn)
    eq(run.spy.modes, [True] * len(data.train_dl))

def test_get_learn_run_and_get_batch(data):
    cbfs = [partial(AvgStatsCallback, accuracy), CudaCallback, partial(BatchTransformXCallback, mnist_view),
            partial(ParamScheduler, 'lr', sched_lin(0.6, 0.2)), Recorder]
    learn, run = get_learn_run([8, 16], data, 0.4, conv_layer, cbs=cbfs)
    first = learn.model[0][0]
    eq((first.in_channels, first.out_channels, first.kernel_size, first.stride), (1, 8, (3, 3), (1, 1)))  # the stem
    xb, yb = get_batch(data.train_dl, run)
    eq((xb.shape, yb.shape), ((32, 1, 28, 28), (32,)))
    run.xb, run.yb = next(iter(data.valid_dl))                   # 07a's own `get_batch`, step by step
    for cb in run.cbs: cb.set_runner(run)
    run('begin_batch')
    eq(run.xb.shape, (64, 1, 28, 28))
    quiet(run.fit, 1, learn)
    eq(run.recorder.lrs[0][0], 0.6)
    assert run.recorder.lrs[0][-1] < 0.6

def test_get_learn_run_uniform_and_opt_func(data):
    learn, run = get_learn_run([8], data, 0.1, conv_layer, None, adam_opt(), True)
    assert isinstance(learn.opt, StatefulOptimizer)
    learn, run = get_learn_run([8], data, 0.1, conv_layer, stem=False)
    eq(learn.model[0][0].kernel_size, (5, 5))             # lesson 10's network on request

def test_model_summary_both_forms(data):
    learn, run = get_learn_run([8, 16], data, 0.4, conv_layer, cbs=[partial(BatchTransformXCallback, mnist_view)])
    out = quiet(model_summary, run, learn, data)
    xb = mnist_view(next(iter(data.valid_dl))[0])
    eq(out.strip(), model_summary(learn.model, xb))
    assert 'Linear' in out and '(64, 2)' in out
    assert 'Conv2d' in model_summary(learn.model, xb, find_all=True)

def test_hooks_in_the_course_form(data):
    model = get_cnn_model(data, [8, 16], conv_layer)
    with Hooks(model, append_stats) as hooks:
        model(torch.randn(8, 1, 28, 28))
        for h in hooks[:-1]:
            ms, ss = h.stats
            eq((len(ms), len(ss)), (1, 1))
    eq(children(model), list(model.children()))

def test_lsuv_in_the_course_form():
    m = nn.Conv2d(3, 8, 3)
    xb = torch.randn(16, 3, 8, 8) * 5
    mods = find_modules(nn.Sequential(m, nn.ReLU()), lambda o: isinstance(o, nn.Conv2d))
    assert mods == [m]
    res = lsuv_module(m, xb)
    assert abs(res.mean) < 1e-3 and abs(res.std - 1) < 1e-3

def test_data_block_in_the_course_form(image_folder):
    class FlipPil(Transform):          # as lesson 11's notebooks number a PIL transform
        _order = 11
        def __call__(self, x):
            assert isinstance(x, PIL.Image.Image)
            return x.transpose(PIL.Image.FLIP_LEFT_RIGHT)
    tfms = [make_rgb, ResizeFixed(16), to_byte_tensor, to_float_tensor, FlipPil()]
    il = ImageList.from_files(image_folder, tfms=tfms)
    eq(len(il), 16)
    sd = SplitData.split_by_func(il, partial(grandparent_splitter, valid_name='val'))
    ll = label_by_func(sd, parent_labeler, proc_y=CategoryProcessor())
    assert ll.train.proc_y is ll.valid.proc_y
    eq(ll.train.proc_y.vocab, ['n01440764', 'n02102040'])
    x, y = ll.train[0]
    eq((x.shape, x.dtype), ((3, 16, 16), torch.float32))
    assert x[:, :, -1].mean() > x[:, :, 0].mean()             # flipped: the bright stripe went to the right
    data = ll.to_databunch(4, c_in=3, c_out=2, num_workers=0)
    data2 = databunchify(ll, 4, c_in=3, c_out=2)
    eq((data.c_in, data.c_out, data2.c_in, data2.c_out), (3, 2, 3, 2))
    xb, yb = next(iter(data.train_dl))
    eq(xb.shape, (4, 3, 16, 16))
    close(norm_imagenette(xb)[:, 0], (xb[:, 0] - 0.47) / 0.29, eps=1e-5)
    show_image(xb[0]); show_batch(xb, c=2); plt.close('all')
    eq([o._order for o in (make_rgb, ResizeFixed(1), FlipPil(), to_byte_tensor, to_float_tensor, np_to_float)], [0, 10, 11, 20, 30, 30])
    eq((PilTransform._order, CenterCrop(8)._order), (11, 5))   # crops before ResizeFixed: they read the full image

def test_course_pipeline_trains(image_folder):
    il = ImageList.from_files(image_folder, tfms=[make_rgb, ResizeFixed(16), to_byte_tensor, to_float_tensor])
    ll = label_by_func(SplitData.split_by_func(il, partial(grandparent_splitter, valid_name='val')), parent_labeler,
                       proc_y=CategoryProcessor())
    data = ll.to_databunch(4, c_in=3, c_out=2)
    cbfs = [partial(AvgStatsCallback, accuracy), CudaCallback, partial(BatchTransformXCallback, norm_imagenette)]
    learn, run = get_learn_run([8], data, 0.1, conv_layer, cbs=cbfs)
    out = quiet(run.fit, 1, learn)
    assert 'train_loss' in out and len(run.avg_stats.history) == 1

def test_optimizers_in_the_course_form():
    model = nn.Linear(4, 2)
    opt = sgd_opt(model.parameters(), lr=0.1)
    eq((opt.hypers[0]['wd'], opt.hypers[0]['lr']), (0., 0.1))
    opt = sgd_opt(model.parameters(), lr=0.1, wd=1e-4)
    eq(opt.hypers[0]['wd'], 1e-4)
    assert opt.param_groups[0]['params'][0] is model.weight
    model(torch.randn(3, 4)).pow(2).sum().backward()
    eq([id(p) for p, _ in opt.grad_params()], [id(model.weight), id(model.bias)])
    w = model.weight.detach().clone()
    opt.step()
    close(model.weight.detach(), w * (1 - 0.1 * 1e-4) - 0.1 * model.weight.grad)
    p = torch.ones(3, requires_grad=True); p.grad = torch.full((3,), 2.)
    with torch.no_grad(): sgd_step(p, 0.5)                     # a per-tensor stepper, called as the lesson does
    eq(p.detach(), torch.zeros(3))
    for opt_func in (adam_opt(), partial(lamb, wd=0.01), sgd_mom_opt):
        opt = opt_func(model.parameters(), lr=0.01)
        opt.step()
        assert isinstance(opt, StatefulOptimizer) and all(opt.state_for(p) for p in model.parameters())
    eq(lin_comb(tensor(1.), tensor(3.), 0.5), tensor(2.))
    eq(lamb(model.parameters(), lr=0.003).hypers[0]['lr'], 0.003)

def test_learner_and_get_learner_of_09b(data):
    cbfs = [partial(AvgStatsCallback, accuracy), CudaCallback, partial(BatchTransformXCallback, mnist_view), Recorder]
    learn = get_learner([8, 16], data, 0.4, conv_layer, cb_funcs=cbfs)
    assert isinstance(learn.opt_func(learn.splitter(learn.model), lr=0.1), Optimizer)   # sgd_opt by default
    phases = combine_scheds([0.3, 0.7], cos_1cycle_anneal(0.2, 0.6, 0.2))
    quiet(learn.fit, 1, ParamScheduler('lr', phases))
    eq(len(learn.recorder.losses), len(data.train_dl))
    close(max(learn.recorder.lrs[0]), 0.6, eps=0.05)
    learn = Learner(nn.Sequential(Lambda(flatten), nn.Linear(784, 2)), data, F.cross_entropy, sgd_opt, 0.2,
                    cb_funcs=[partial(AvgStatsCallback, accuracy), ProgressCallback])
    out = quiet(learn.fit, 2)
    assert 'valid_accuracy' in out and learn.avg_stats.history[-1]['valid_accuracy'] > 0.9

def test_augmentation_in_the_course_form():
    img = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    for tfm, size in [(PilRandomFlip(0.8), (400, 300)), (PilRandomDihedral(), None), (CenterCrop(128), (128, 128)),
                      (RandomResizedCrop(128), (128, 128)), (PilTiltRandomCrop(128, magnitude=0.1), (128, 128)),
                      (PilTiltRandomCrop(128, 200, magnitude=0.2), (128, 128)), (GeneralCrop(64), (64, 64))]:
        out = tfm(img)
        assert isinstance(out, PIL.Image.Image)
        if size: eq(out.size, size)
    eq(process_sz(128), (128, 128))
    eq(default_crop_size(400, 300), [300, 300])
    x = np_to_float(img)
    eq((x.shape, x.dtype), ((3, 300, 400), torch.float32))
    src = ((90, 60), (30, 280), (310, 280), (250, 60))
    eq(warp(img, (64, 64), src, resample=PIL.Image.NEAREST).size, (64, 64))
    eq(len(find_coeffs(src, ((0, 0), (0, 128), (128, 128), (128, 0)))), 8)
    assert 0 <= uniform(0, 1) <= 1
