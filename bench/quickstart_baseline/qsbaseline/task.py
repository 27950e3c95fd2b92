"""qsbaseline: a Flower / PyTorch app."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from datasets import load_from_disk
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner
from torch.utils.data import DataLoader
from torchvision.transforms import Compose, Normalize, ToTensor


class Net(nn.Module):
    """ReLU MLP 784-128-128-10 (fedlocal's MLP with width 128, depth 2)"""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


partitioner = None  # Cache the partitioner (the quickstart caches its FederatedDataset)

pytorch_transforms = Compose([ToTensor(), Normalize((0.2860,), (0.3530,))])


def apply_transforms(batch):
    """Apply transforms to the partition."""
    batch["image"] = [pytorch_transforms(img) for img in batch["image"]]
    return batch


def load_data(data_dir, partition_id, num_partitions, batch_size, scheme, alpha, seed):
    """Load partition Fashion-MNIST data."""
    # Only initialize the partitioner once
    global partitioner
    if partitioner is None:
        if scheme == "iid":
            partitioner = IidPartitioner(num_partitions=num_partitions)
        else:
            partitioner = DirichletPartitioner(
                num_partitions=num_partitions, partition_by="label", alpha=alpha,
                min_partition_size=10, self_balancing=False, shuffle=True, seed=seed,
            )
        partitioner.dataset = load_from_disk(f"{data_dir}/train")
    partition = partitioner.load_partition(partition_id)
    # Construct dataloader
    partition = partition.with_transform(apply_transforms)
    trainloader = DataLoader(partition, batch_size=batch_size, shuffle=True)
    return trainloader


def load_centralized_dataset(data_dir):
    """Load test set and return dataloader."""
    test_dataset = load_from_disk(f"{data_dir}/test")
    dataset = test_dataset.with_format("torch").with_transform(apply_transforms)
    return DataLoader(dataset, batch_size=128)


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for batch in trainloader:
            images = batch["image"].to(device)
            labels = batch["label"].to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    avg_trainloss = running_loss / (epochs * len(trainloader))
    return avg_trainloss


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for batch in testloader:
            images = batch["image"].to(device)
            labels = batch["label"].to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy
