import pytest
import torch

from semsim_audit.attacks import Observation, recover_labels
from semsim_audit.models import model_for


def test_idlg_recovers_the_label_of_ten_real_photos(photos, client_gradient, first_of_class):
    torch.manual_seed(0)
    model = model_for("lenet", photos.spec, uniform_init=True)
    correct = 0
    # One photo of every class, so a method that always answers the same class scores 1/10.
    for index in first_of_class(photos, range(10)):
        image, label = photos[index]
        gradient = client_gradient(model, image[None], torch.tensor([label]))
        observation = Observation.from_gradients(model, gradient, photos.spec, num_samples=1)
        correct += int(recover_labels(observation, "idlg").item() == label)
    assert correct == 10


@pytest.mark.parametrize("architecture, options", [("lenet", {}), ("convnet", {"width": 16})])
@pytest.mark.parametrize("classes", [(0, 3, 5, 9), (1, 2, 7, 8), (4, 6, 0, 2)])
def test_batch_labels_of_four_distinct_classes(photos, client_gradient, first_of_class, architecture,
                                               options, classes):
    torch.manual_seed(1)
    model = model_for(architecture, photos.spec, **options)
    indices = first_of_class(photos, classes)
    images = torch.stack([photos[i][0] for i in indices])
    labels = torch.tensor(classes)
    gradient = client_gradient(model, images, labels)
    observation = Observation.from_gradients(model, gradient, photos.spec, num_samples=4)
    assert recover_labels(observation, "batch").tolist() == sorted(classes)


def test_batch_labels_count_a_repeated_class(photos, client_gradient):
    torch.manual_seed(2)
    model = model_for("convnet", photos.spec, width=16)
    targets = torch.as_tensor(photos.targets)
    indices = [int(i) for i in torch.nonzero(targets == 3)[:3]] + [int(torch.nonzero(targets == 8)[0])]
    images = torch.stack([photos[i][0] for i in indices])
    labels = torch.tensor([3, 3, 3, 8])
    observation = Observation.from_gradients(model, client_gradient(model, images, labels), photos.spec,
                                             num_samples=4)
    assert recover_labels(observation, "batch").tolist() == [3, 3, 3, 8]


def test_idlg_refuses_a_batch(photos, client_gradient):
    model = model_for("lenet", photos.spec)
    images = torch.stack([photos[0][0], photos[70][0]])
    gradient = client_gradient(model, images, torch.tensor([0, 1]))
    observation = Observation.from_gradients(model, gradient, photos.spec, num_samples=2)
    with pytest.raises(ValueError, match="num_samples == 1"):
        recover_labels(observation, "idlg")
